/* mmapipc-corpus: rec size=64 align=64 */
struct rec { int seq; char data[20]; } __attribute__((aligned(64)));
