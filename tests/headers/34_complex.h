/* mmapipc-corpus: rec refused="not supported" */
struct rec { float _Complex c; };
