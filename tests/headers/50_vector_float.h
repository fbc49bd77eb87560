/* mmapipc-corpus: rec ok */
typedef float v4f __attribute__((vector_size(16)));
typedef unsigned char v16u8 __attribute__((vector_size(16)));
struct rec { int n; v4f f; v16u8 bytes; };
