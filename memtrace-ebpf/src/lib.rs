#![no_std]
// This file exists to enable the library target (aya-template): the programs are in main.rs.
