/* mmapipc-corpus: rec refused="has no members" */
struct rec {};
