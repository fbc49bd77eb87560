/* mmapipc-corpus: rec size=32 align=16 */
struct rec { char c; _Alignas(16) int a; };
