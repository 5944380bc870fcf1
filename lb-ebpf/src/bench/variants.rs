//! `ikelb`'s forward path with one step taken out at a time (phase 2 attribution).
