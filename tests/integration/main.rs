//! The one integration-test binary: the real `dkms-hook` run on fixture roots.

mod apt;
mod attacks;
mod bad_input;
mod fixture;
mod rebuild;
mod replay;
