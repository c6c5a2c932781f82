#include "internal.h"
int main(void){return 0;}
