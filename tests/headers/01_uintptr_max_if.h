/* mmapipc-corpus: rec size=16 align=8 */
#include <stdint.h>
#if UINTPTR_MAX > 0xffffffffu
typedef uint64_t word_t;
#else
typedef uint32_t word_t;
#endif
struct rec { word_t w; char tag; };
