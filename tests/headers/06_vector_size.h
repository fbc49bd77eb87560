/* mmapipc-corpus: rec size=32 align=16 */
typedef int vec __attribute__((vector_size(16)));
struct rec { char c; vec v; };
