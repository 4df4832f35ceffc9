//! Reverse-mode automatic differentiation over a tape of recorded ops.
//!
//! A [`Var`] is a tensor value plus, when it was produced by an op while gradients were being
//! recorded, the op's backward function and its inputs. `backward` walks the recorded ops in
//! reverse topological order. Gradients are computed only for inputs that require them: a
//! frozen weight (a `Var::constant`) never gets a gradient buffer, and ops skip the matching
//! products entirely (a frozen 4544x18176 weight costs no weight-sized work or memory).
//!
//! Leaves that require gradients (trainable parameters) keep their gradients in a
//! [`GradStore`], keyed by the leaf's identity. Parameters are updated in place with
//! [`Var::set_value`], so a model can hold its `Var`s across steps.

mod checkpoint;

pub use checkpoint::{checkpoint, recomputing};

use crate::{Error, Result, Tensor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record themselves for backward on this thread.
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Runs `f` without recording any op (inference, evaluation, checkpoint forwards).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = GradModeGuard::set(false);
    f()
}

/// Restores the previous grad mode when dropped.
pub struct GradModeGuard {
    previous: bool,
}

impl GradModeGuard {
    pub fn set(enabled: bool) -> Self {
        let previous = GRAD_ENABLED.with(|g| g.replace(enabled));
        GradModeGuard { previous }
    }
}

impl Drop for GradModeGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// The backward function of one recorded op: given the gradient of the op's output and which
/// inputs need a gradient, returns one entry per input (`None` where not needed). The store is
/// passed for ops that own a sub-graph (activation checkpointing) and deliver leaf gradients
/// directly.
pub(crate) type BackwardFn =
    Box<dyn Fn(&Tensor, &[bool], &mut GradStore) -> Result<Vec<Option<Tensor>>>>;

struct GradFn {
    name: &'static str,
    inputs: Vec<Var>,
    backward: BackwardFn,
}

struct Node {
    id: u64,
    value: RefCell<Tensor>,
    requires_grad: bool,
    grad_fn: Option<GradFn>,
}

/// A tensor in the autograd graph.
#[derive(Clone)]
pub struct Var(Rc<Node>);

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Var(#{}, {} {}, requires_grad={}{})",
            self.0.id,
            self.value().dtype(),
            self.value().shape(),
            self.0.requires_grad,
            self.0
                .grad_fn
                .as_ref()
                .map(|g| format!(", op={}", g.name))
                .unwrap_or_default()
        )
    }
}

impl Var {
    fn new(value: Tensor, requires_grad: bool, grad_fn: Option<GradFn>) -> Var {
        Var(Rc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            value: RefCell::new(value),
            requires_grad,
            grad_fn,
        }))
    }

    /// A leaf that never receives a gradient (frozen weights, inputs, masks).
    pub fn constant(value: Tensor) -> Var {
        Var::new(value, false, None)
    }

    /// A trainable leaf: backward stores its gradient in the [`GradStore`].
    pub fn parameter(value: Tensor) -> Var {
        Var::new(value, true, None)
    }

    /// A leaf with an explicit choice.
    pub fn leaf(value: Tensor, requires_grad: bool) -> Var {
        Var::new(value, requires_grad, None)
    }

    /// The current value (a cheap clone of the tensor handle).
    pub fn value(&self) -> Tensor {
        self.0.value.borrow().clone()
    }

    /// Replaces a leaf's value (optimizer updates). Shape and dtype must stay the same.
    pub fn set_value(&self, t: Tensor) -> Result<()> {
        if self.0.grad_fn.is_some() {
            return Err(Error::invalid("set_value", "only leaves can be assigned"));
        }
        let cur = self.0.value.borrow();
        if cur.shape() != t.shape() || cur.dtype() != t.dtype() {
            return Err(Error::shape(
                "set_value",
                format!(
                    "{} {} vs {} {}",
                    cur.dtype(),
                    cur.shape(),
                    t.dtype(),
                    t.shape()
                ),
            ));
        }
        drop(cur);
        *self.0.value.borrow_mut() = t;
        Ok(())
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    pub fn is_leaf(&self) -> bool {
        self.0.grad_fn.is_none()
    }

    /// The same value cut off from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.value())
    }

    pub fn shape(&self) -> crate::Shape {
        self.value().shape().clone()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.value().dims().to_vec()
    }

    /// Name of the op that produced this var, if any.
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.grad_fn.as_ref().map(|g| g.name)
    }

    /// Backpropagates from a scalar (one-element) var with seed gradient 1.
    pub fn backward(&self) -> Result<GradStore> {
        let v = self.value();
        if v.elem_count() != 1 {
            return Err(Error::shape(
                "backward",
                format!("backward() needs a one-element output, got {}", v.shape()),
            ));
        }
        let seed = Tensor::full(1.0, v.shape().clone(), v.dtype());
        let mut store = GradStore::default();
        self.backward_with(seed, &mut store)?;
        Ok(store)
    }

    /// Backpropagates `grad` (the gradient of some objective with respect to this var) and
    /// accumulates leaf gradients into `store`.
    pub fn backward_with(&self, grad: Tensor, store: &mut GradStore) -> Result<()> {
        backward_from(self, grad, store, 0)
    }
}

/// Records an op: when gradients are enabled and some input requires one, the output is a node
/// that remembers its inputs and `backward`; otherwise a constant (and the closure with whatever
/// it saved is dropped at once).
pub(crate) fn record(
    name: &'static str,
    value: Tensor,
    inputs: &[&Var],
    backward: impl Fn(&Tensor, &[bool], &mut GradStore) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Var {
    let any = inputs.iter().any(|v| v.requires_grad());
    record_node(name, value, inputs, any, backward)
}

/// Like [`record`], but the caller decides whether the output needs a gradient (a checkpointed
/// segment may capture parameters even when none of its inputs requires a gradient).
pub(crate) fn record_node(
    name: &'static str,
    value: Tensor,
    inputs: &[&Var],
    requires_grad: bool,
    backward: impl Fn(&Tensor, &[bool], &mut GradStore) -> Result<Vec<Option<Tensor>>> + 'static,
) -> Var {
    if grad_enabled() && requires_grad {
        Var::new(
            value,
            true,
            Some(GradFn {
                name,
                inputs: inputs.iter().map(|v| (*v).clone()).collect(),
                backward: Box::new(backward),
            }),
        )
    } else {
        Var::constant(value)
    }
}

/// Gradients of trainable leaves, keyed by the leaf.
#[derive(Default)]
pub struct GradStore {
    grads: HashMap<u64, Tensor>,
}

impl GradStore {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.grads.get(&v.id())
    }

    pub fn remove(&mut self, v: &Var) -> Option<Tensor> {
        self.grads.remove(&v.id())
    }

    pub fn insert(&mut self, v: &Var, g: Tensor) {
        self.grads.insert(v.id(), g);
    }

    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Adds `g` to the gradient held for leaf id `id`.
    pub(crate) fn accumulate_id(&mut self, id: u64, g: Tensor) -> Result<()> {
        let merged = match self.grads.remove(&id) {
            Some(prev) => crate::ops::elementwise::accumulate_tensors(prev, &g)?,
            None => g,
        };
        self.grads.insert(id, merged);
        Ok(())
    }

    /// Adds `g` to `v`'s gradient (gradient accumulation across micro-batches).
    pub fn accumulate(&mut self, v: &Var, g: Tensor) -> Result<()> {
        self.accumulate_id(v.id(), g)
    }

    /// Merges all gradients of `other` into this store.
    pub fn merge(&mut self, other: GradStore) -> Result<()> {
        for (id, g) in other.grads {
            self.accumulate_id(id, g)?;
        }
        Ok(())
    }
}

/// Reverse-topological order of the nodes reachable from `root` that need gradients.
fn topo_order(root: &Var) -> Vec<Var> {
    let mut order = Vec::new();
    let mut visited = std::collections::HashSet::new();
    // Iterative post-order DFS (decoder stacks are deep; no recursion).
    let mut stack: Vec<(Var, bool)> = vec![(root.clone(), false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if !visited.insert(v.id()) {
            continue;
        }
        stack.push((v.clone(), true));
        if let Some(gf) = &v.0.grad_fn {
            for inp in gf.inputs.iter().rev() {
                if inp.requires_grad() && !visited.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order.reverse();
    order
}

/// Backward pass. `min_internal_id`: nodes with an op and an id below it belong to an enclosing
/// graph; reaching one is a programming error (a checkpointed segment captured a non-leaf).
pub(crate) fn backward_from(
    root: &Var,
    grad: Tensor,
    store: &mut GradStore,
    min_internal_id: u64,
) -> Result<()> {
    if !root.requires_grad() {
        return Err(Error::invalid(
            "backward",
            "the output does not depend on any var that requires a gradient",
        ));
    }
    if grad.shape() != root.value().shape() {
        return Err(Error::shapes(
            "backward",
            grad.shape(),
            root.value().shape(),
        ));
    }
    let order = topo_order(root);
    let mut pending: HashMap<u64, Tensor> = HashMap::new();
    pending.insert(root.id(), grad);
    for v in order {
        let Some(g) = pending.remove(&v.id()) else {
            continue;
        };
        match &v.0.grad_fn {
            None => store.accumulate_id(v.id(), g)?,
            Some(gf) => {
                if v.id() < min_internal_id {
                    return Err(Error::invalid(
                        "checkpoint",
                        format!("the segment captured a non-leaf var produced by `{}`; pass it as a segment input", gf.name),
                    ));
                }
                let needs: Vec<bool> = gf.inputs.iter().map(|i| i.requires_grad()).collect();
                let grads = (gf.backward)(&g, &needs, store)?;
                if grads.len() != gf.inputs.len() {
                    return Err(Error::invalid(
                        gf.name,
                        "backward returned the wrong number of gradients",
                    ));
                }
                for ((inp, need), gi) in gf.inputs.iter().zip(needs).zip(grads) {
                    if !need {
                        continue;
                    }
                    let Some(gi) = gi else { continue };
                    if gi.shape() != inp.value().shape() {
                        return Err(Error::shape(
                            gf.name,
                            format!(
                                "backward produced gradient {} for input {}",
                                gi.shape(),
                                inp.value().shape()
                            ),
                        ));
                    }
                    let merged = match pending.remove(&inp.id()) {
                        Some(prev) => crate::ops::elementwise::accumulate_tensors(prev, &gi)?,
                        None => gi,
                    };
                    pending.insert(inp.id(), merged);
                }
            }
        }
    }
    Ok(())
}
