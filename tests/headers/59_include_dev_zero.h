/* mmapipc-corpus: rec refused="out of memory|took more than" timeout=1 */
#include "/dev/zero"
struct rec { int a; };
