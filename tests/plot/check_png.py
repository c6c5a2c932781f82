"""check_png.py — reads a PNG with the standard library (zlib) and reports where colours lie
along one column, so a test can check what a heatmap shows, not just that a file exists.

usage: python3 tests/plot/check_png.py FILE.png X R,G,B [R,G,B ...]
Prints 'WxH' then, per colour, the number of pixels of exactly that colour in column X and
their mean row ('-' when none).
"""
import struct
import sys
import zlib


def read_png(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG")
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
            if depth != 8 or ctype not in (2, 6):
                sys.exit(f"{path}: colour type {ctype} depth {depth} not handled")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


def main():
    w, h, bpp, rows = read_png(sys.argv[1])
    x = int(sys.argv[2])
    print(f"{w}x{h}")
    for spec in sys.argv[3:]:
        rgb = tuple(int(v) for v in spec.split(","))
        ys = [y for y in range(h) if tuple(rows[y][x * bpp:x * bpp + 3]) == rgb]
        print(spec, len(ys), f"{sum(ys) / len(ys):.1f}" if ys else "-")


if __name__ == "__main__":
    main()
