/* mmapipc-corpus: struct timespec ok */
#include <time.h>
