/* mmapipc-corpus: rec refused="out of memory|took more than" */
#include "/dev/zero"
struct rec { int a; };
