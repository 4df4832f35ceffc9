//! Under per-layer recompute the last decoder layer keeps its activations instead of being
//! checkpointed; the gradients must be bitwise those of checkpointing every layer, dropout
//! masks included.

use engine::optim::{AdamW, AdamWConfig};
use engine::testing::randn;
use engine::{ops, rng, DType, Tensor, Var};
use model_falcon::peft::{LoraConfig, TargetModules};
use model_falcon::{attach_lora, random_model, BaseOptions, FalconConfig, QuantMode};

fn config() -> FalconConfig {
    let json = r#"{"model_type": "falcon", "vocab_size": 96, "hidden_size": 64,
        "num_hidden_layers": 3, "num_attention_heads": 4, "multi_query": true,
        "new_decoder_architecture": false, "parallel_attn": true, "alibi": false, "bias": false,
        "layer_norm_epsilon": 1e-5, "bos_token_id": 1, "eos_token_id": 2}"#;
    FalconConfig::from_json_str(json, "test config").expect("valid config")
}

#[test]
fn keeping_the_last_layer_gives_the_gradients_of_checkpointing_it() {
    for quant in [QuantMode::None, QuantMode::Nf4] {
        let opts = BaseOptions {
            quant,
            ..BaseOptions::default()
        };
        let mut model = random_model(config(), 7, &opts).expect("model");
        let lora = LoraConfig::new(4, 8.0, 0.1, TargetModules::from_flag("all-linear"));
        attach_lora(&mut model, &lora, 3).expect("lora");
        model.recompute = true;
        let (b, t) = (2, 12);
        let ids: Vec<u32> = (0..(b * t) as u64)
            .map(|i| (rng::bits(5, i) % 96) as u32)
            .collect();
        let ids = Tensor::from_vec(ids, [b, t]).unwrap();
        let mut mask = vec![1u8; b * t];
        mask[t] = 0; // a padded position in the second row
        let mask = Tensor::from_vec(mask, [b, t]).unwrap();
        let params: Vec<Var> = model
            .lora_parameters()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        // One optimizer step first, so B (zero at init) is not zero and every LoRA factor has
        // a gradient.
        let labels: Vec<i32> = ids
            .to_vec::<u32>()
            .unwrap()
            .iter()
            .map(|&x| x as i32)
            .collect();
        let loss = model.loss(&ids, Some(&mask), &labels, 20.0, true).unwrap();
        let mut opt = AdamW::new(params.clone(), AdamWConfig::default()).unwrap();
        opt.step(&loss.backward().unwrap(), 1e-2).unwrap();

        let w = Var::constant(randn(vec![b, t, 64], DType::F32, 11, 1.0));
        let run = |checkpoint_last: bool| {
            rng::set_state(rng::RngState {
                seed: 123,
                offset: 0,
            });
            let h = model
                .forward_hidden_with(&ids, Some(&mask), true, checkpoint_last)
                .unwrap();
            let obj = ops::sum_all(&ops::mul(&h, &w).unwrap()).unwrap();
            let grads = obj.backward().unwrap();
            let g: Vec<Vec<u32>> = params
                .iter()
                .map(|p| {
                    let v = grads.get(p).expect("gradient").to_f32_vec().unwrap();
                    assert!(v.iter().any(|&x| x != 0.0), "a zero gradient tests nothing");
                    v.iter().map(|x| x.to_bits()).collect()
                })
                .collect();
            let hv: Vec<u32> = h
                .value()
                .to_f32_vec()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (hv, g)
        };
        let (h_all, g_all) = run(true);
        let (h_kept, g_kept) = run(false);
        assert_eq!(h_all, h_kept, "{quant:?}: hidden states differ");
        assert_eq!(g_all.len(), g_kept.len());
        for (i, (a, k)) in g_all.iter().zip(&g_kept).enumerate() {
            assert_eq!(a, k, "{quant:?}: gradient of LoRA parameter {i} differs");
        }
    }
}
