pub mod money;
pub mod providers;
pub mod sandbox;
