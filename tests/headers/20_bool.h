/* mmapipc-corpus: rec ok */
#include <stdbool.h>
struct rec { bool a; _Bool b; bool flags[3]; int n; };
