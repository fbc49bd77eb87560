/* mmapipc-corpus: rec size=8 */
#if __GNUC__ >= 5
struct rec { char c; int x; };
#else
struct rec { char c; short x; };
#endif
