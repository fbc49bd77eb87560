/* mmapipc-corpus: struct timeval ok */
#include <sys/time.h>
