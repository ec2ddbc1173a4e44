//! The one integration-test binary: the real `dkms-hook` run on fixture roots.

mod fixture;
mod rebuild;
mod replay;
