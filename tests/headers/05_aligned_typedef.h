/* mmapipc-corpus: rec size=16 align=8 */
typedef int myint __attribute__((aligned(8)));
struct rec { char c; myint a; };
