/* mmapipc-corpus: rec ok */
#include <stdint.h>
#include <stddef.h>
struct rec { int8_t a; uint8_t b; int16_t c; uint16_t d; int32_t e; uint32_t f;
    int64_t g; uint64_t h; int_least8_t i; uint_fast16_t j; intmax_t k; uintptr_t l;
    size_t m; ptrdiff_t n; };
