/* mmapipc-corpus: rec size=16 */
#include <stdint.h>
struct rec {
#if __SIZEOF_POINTER__ == 8
    int64_t a;
#else
    int32_t a;
#endif
    char c;
};
