/* mmapipc-corpus: rec ok */
typedef enum { OFF, ON } state_t;
typedef state_t state2_t;
typedef int int_t;
typedef int_t int2_t;
struct rec { state2_t states[4]; int2_t n; };
