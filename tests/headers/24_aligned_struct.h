/* mmapipc-corpus: rec size=16 align=16 */
struct rec { int n; } __attribute__((aligned(16)));
