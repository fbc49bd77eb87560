/* mmapipc-corpus: rec size=8 */
typedef char t4[4] __attribute__((aligned(4)));
struct rec { char c; t4 t; };
