fn main() {
    println!("trainer: the QLoRA pipeline is not wired up yet");
}
