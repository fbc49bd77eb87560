/* mmapipc-corpus: rec size=12 */
#ifndef REC_LEN
#define REC_LEN 8
#endif
struct rec { int n; char name[REC_LEN]; };
