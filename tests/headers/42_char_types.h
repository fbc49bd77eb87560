/* mmapipc-corpus: rec ok */
#include <wchar.h>
#include <uchar.h>
struct rec { char c; signed char sc; unsigned char uc; wchar_t w; char16_t u16; char32_t u32; char s[7]; };
