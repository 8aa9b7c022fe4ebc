//! The HTTP API of a node (hyper on glommio).
