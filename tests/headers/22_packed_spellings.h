/* mmapipc-corpus: rec size=17 align=1 */
struct a1 { char c; int i; } __attribute__((__packed__));
struct a2 { char c; short s; } __attribute((packed));
struct __attribute__((packed)) rec { struct a1 x; struct a2 y; char c; long long ll; };
