//! AdamW, clipping and LR schedules against values computed by torch.optim.AdamW,
//! torch.nn.utils.clip_grad_norm_ and transformers.get_scheduler
//! (scripts/fixtures/optim_reference.py prints them).

use engine::optim::{clip_grad_norm, AdamW, AdamWConfig, LrSchedule, SchedulerKind};
use engine::{GradStore, Tensor, Var};

fn close(got: &[f64], want: &[f64], tol: f64) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn adamw_matches_torch() {
    let p = Var::parameter(Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 1e-3], [4]).unwrap());
    let mut opt = AdamW::new(
        vec![p.clone()],
        AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let grads = [
        [0.1, -0.2, 0.3, 0.0],
        [-0.5, 0.25, 0.0, 1e-4],
        [2.0, -3.0, 1.0, -1e-4],
    ];
    let lrs = [1e-2, 5e-3, 0.0];
    let want = [
        [
            0.4895000009999999,
            -0.9890000004999999,
            1.9880000003333334,
            0.000999,
        ],
        [
            0.4922470218271167,
            -0.9893191617721586,
            1.9836557092204579,
            -0.002721657639569293,
        ],
        [
            0.4922470218271167,
            -0.9893191617721586,
            1.9836557092204579,
            -0.002721657639569293,
        ],
    ];
    for ((g, lr), w) in grads.iter().zip(lrs).zip(want) {
        let mut store = GradStore::default();
        store.insert(&p, Tensor::from_vec(g.to_vec(), [4]).unwrap());
        opt.step(&store, lr).unwrap();
        close(&p.value().to_f64_vec().unwrap(), &w, 1e-14);
    }
    assert_eq!(opt.state()[0].as_ref().unwrap().step, 3);
}

#[test]
fn adamw_skips_parameters_without_gradient_and_rejects_frozen() {
    let a = Var::parameter(Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap());
    let b = Var::parameter(Tensor::from_vec(vec![3.0f32], [1]).unwrap());
    let mut opt = AdamW::new(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
    let mut store = GradStore::default();
    store.insert(&a, Tensor::from_vec(vec![1.0f32, -1.0], [2]).unwrap());
    opt.step(&store, 0.1).unwrap();
    assert_eq!(b.value().to_vec::<f32>().unwrap(), vec![3.0]);
    assert!(opt.state()[1].is_none());
    // First Adam step moves each coordinate by lr·sign(g) (up to eps).
    close(&a.value().to_f64_vec().unwrap(), &[0.9, 2.1], 1e-6);
    assert!(AdamW::new(
        vec![Var::constant(Tensor::zeros([1], engine::DType::F32))],
        AdamWConfig::default()
    )
    .is_err());
}

#[test]
fn clipping_matches_torch() {
    let a = Var::parameter(Tensor::zeros([3], engine::DType::F64));
    let b = Var::parameter(Tensor::zeros([2], engine::DType::F64));
    let mut store = GradStore::default();
    store.insert(&a, Tensor::from_vec(vec![3.0f64, -4.0, 1.0], [3]).unwrap());
    store.insert(&b, Tensor::from_vec(vec![2.0f64, 0.5], [2]).unwrap());
    let norm = clip_grad_norm(&mut store, &[a.clone(), b.clone()], 1.0).unwrap();
    assert!((norm - 5.5).abs() < 1e-15);
    let mut got = store.get(&a).unwrap().to_f64_vec().unwrap();
    got.extend(store.get(&b).unwrap().to_f64_vec().unwrap());
    close(
        &got,
        &[
            0.5454544462810098,
            -0.7272725950413463,
            0.18181814876033658,
            0.36363629752067317,
            0.09090907438016829,
        ],
        1e-15,
    );
    // Below the limit nothing changes.
    let n2 = clip_grad_norm(&mut store, &[a.clone(), b], 10.0).unwrap();
    assert!((n2 - 1.0).abs() < 1e-6);
    close(
        &store.get(&a).unwrap().to_f64_vec().unwrap(),
        &[0.5454544462810098, -0.7272725950413463, 0.18181814876033658],
        1e-15,
    );
}

#[test]
fn schedules_match_transformers() {
    let cases: [(SchedulerKind, [f64; 12]); 4] = [
        (
            SchedulerKind::Linear,
            [
                0.0,
                6.666666666666667e-06,
                1.3333333333333333e-05,
                2e-05,
                1.7142857142857142e-05,
                1.4285714285714287e-05,
                1.1428571428571429e-05,
                8.571428571428571e-06,
                5.7142857142857145e-06,
                2.8571428571428573e-06,
                0.0,
                0.0,
            ],
        ),
        (
            SchedulerKind::Cosine,
            [
                0.0,
                6.666666666666667e-06,
                1.3333333333333333e-05,
                2e-05,
                1.900968867902419e-05,
                1.6234898018587336e-05,
                1.2225209339563144e-05,
                7.774790660436857e-06,
                3.7651019814126656e-06,
                9.903113209758098e-07,
                0.0,
                9.903113209758087e-07,
            ],
        ),
        (SchedulerKind::Constant, [2e-05; 12]),
        (
            SchedulerKind::ConstantWithWarmup,
            [
                0.0,
                6.666666666666667e-06,
                1.3333333333333333e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
                2e-05,
            ],
        ),
    ];
    for (kind, want) in cases {
        let s = LrSchedule::new(kind, 2e-5, 3, 0.0, 10);
        let got: Vec<f64> = (0..12).map(|i| s.lr(i)).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-18, "{kind:?}: {got:?}");
        }
    }
    // warmup_ratio resolves to ceil(total · ratio) when warmup_steps is 0.
    assert_eq!(
        LrSchedule::new(SchedulerKind::Linear, 1.0, 0, 0.25, 10).warmup_steps,
        3
    );
    assert_eq!(
        LrSchedule::new(SchedulerKind::Linear, 1.0, 2, 0.25, 10).warmup_steps,
        2
    );
}
