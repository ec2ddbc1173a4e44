//! The one integration-test binary: the real `dkms-hook` run on fixture roots.

mod apt;
mod fixture;
mod rebuild;
mod replay;
