/* mmapipc-corpus: rec ok */
struct inner { char a; int b; } __attribute__((aligned(8)));
struct rec { char c; struct inner in; short s; } __attribute__((packed));
