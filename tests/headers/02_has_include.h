/* mmapipc-corpus: rec size=16 */
struct rec {
    char c;
#if __has_include(<no/such/header.h>)
    int a;
#else
    double a;
#endif
};
