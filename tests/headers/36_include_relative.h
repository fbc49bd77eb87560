/* mmapipc-corpus: rec ok */
#include "common.inc"
struct rec { char tag; version_t v; double d; };
