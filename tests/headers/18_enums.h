/* mmapipc-corpus: rec ok */
enum color { RED, GREEN = 5, BLUE };
typedef enum { NEG = -1, POS = 1 } sign_t;
enum __attribute__((packed)) small { S0, S1, S255 = 255 };
enum big { HUGE_VAL_E = 0x100000000LL };
struct rec { enum color c; sign_t s; enum small sm; char pad; enum big b; };
