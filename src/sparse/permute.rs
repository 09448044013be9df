//! Neuron permutations and their application to an FFN's linear layers.
//!
//! An FFN computes `down(act(up(x)))` or, gated, `down(act(gate(x)) ⊙ up(x))`. Its hidden
//! neurons can be listed in any order: permuting the rows of `up` and `gate` (and their
//! biases) and the columns of `down` by the same permutation computes the same function,
//! up to the f32 rounding of `down`'s sum, whose terms are added in another order.
//! Putting hot neurons first makes their weights contiguous: rows `0..h` of `up`/`gate`
//! and columns `0..h` of `down`, ready to be narrowed for sparse inference.

use candle_core::{Device, Tensor};
use candle_nn::Linear;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sparse::neuron_stats::HotSet;

/// A permutation of `n` neurons: new position `p` holds old neuron `order()[p]`.
///
/// Serializes as the plain `order` array; deserialization validates it like
/// [`NeuronPermutation::from_order`].
///
/// ```
/// use candle_compress::sparse::NeuronPermutation;
///
/// let p = NeuronPermutation::from_order(vec![2, 0, 1])?;
/// assert_eq!(p.apply(&["a", "b", "c"])?, vec!["c", "a", "b"]);
/// let inv = p.inverse();             // old index -> new position
/// assert_eq!(inv.order(), &[1, 2, 0]);
/// assert_eq!(p.new_position(2), Some(0));
/// assert!(NeuronPermutation::from_order(vec![0, 0, 1]).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<usize>", into = "Vec<usize>")]
pub struct NeuronPermutation {
    order: Vec<usize>,
}

impl TryFrom<Vec<usize>> for NeuronPermutation {
    type Error = Error;
    fn try_from(order: Vec<usize>) -> Result<Self> {
        Self::from_order(order)
    }
}

impl From<NeuronPermutation> for Vec<usize> {
    fn from(p: NeuronPermutation) -> Self {
        p.order
    }
}

impl NeuronPermutation {
    /// A permutation from its order (`order[new] = old`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `order` is empty, or is not a bijection of
    /// `0..order.len()` (an index out of range or repeated; the message names it).
    pub fn from_order(order: Vec<usize>) -> Result<Self> {
        let n = order.len();
        if n == 0 {
            return Err(Error::invalid("order", "a permutation of 0 neurons"));
        }
        let mut seen = vec![false; n];
        for (p, &i) in order.iter().enumerate() {
            match seen.get_mut(i) {
                None => {
                    return Err(Error::invalid(
                        "order",
                        format!("position {p} holds {i}, out of range for {n} neurons"),
                    ))
                }
                Some(true) => {
                    return Err(Error::invalid(
                        "order",
                        format!("neuron {i} appears twice (again at position {p})"),
                    ))
                }
                Some(s) => *s = true,
            }
        }
        Ok(Self { order })
    }

    /// Wraps an order already known to be a bijection (built by this crate).
    pub(crate) fn from_valid_order(order: Vec<usize>) -> Self {
        debug_assert!(Self::from_order(order.clone()).is_ok());
        Self { order }
    }

    /// The identity on `n` neurons.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `n == 0`.
    pub fn identity(n: usize) -> Result<Self> {
        Self::from_order((0..n).collect())
    }

    /// Number of neurons.
    #[must_use]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Always `false`: a permutation has at least one neuron. Present for API symmetry
    /// with [`NeuronPermutation::len`].
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `order()[new] = old`.
    #[must_use]
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Where old neuron `old` went, or `None` when out of range. O(n); use
    /// [`NeuronPermutation::inverse`] for many lookups.
    #[must_use]
    pub fn new_position(&self, old: usize) -> Option<usize> {
        self.order.iter().position(|&o| o == old)
    }

    /// The inverse permutation: `inverse().order()[old] = new`. Applying a permutation and
    /// then its inverse restores the original order (e.g. to map a permuted FFN back, or
    /// to translate neuron indices from an old profile into new positions).
    #[must_use]
    pub fn inverse(&self) -> Self {
        let mut inv = vec![0; self.order.len()];
        for (new, &old) in self.order.iter().enumerate() {
            inv[old] = new;
        }
        Self { order: inv }
    }

    /// Reorders per-neuron values: `out[p] = values[order[p]]` (frequencies, masks, …).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `values.len() != self.len()`.
    pub fn apply<T: Clone>(&self, values: &[T]) -> Result<Vec<T>> {
        if values.len() != self.order.len() {
            return Err(Error::shape(
                "NeuronPermutation::apply values",
                self.order.len(),
                values.len(),
            ));
        }
        Ok(self.order.iter().map(|&i| values[i].clone()).collect())
    }

    /// The order as a U32 index tensor for `index_select`.
    fn index_tensor(&self, device: &Device) -> Result<Tensor> {
        let idx = self
            .order
            .iter()
            .map(|&i| u32::try_from(i))
            .collect::<std::result::Result<Vec<u32>, _>>()
            .map_err(|_| {
                Error::invalid(
                    "permutation",
                    format!("{} neurons exceed the u32 index range", self.order.len()),
                )
            })?;
        Ok(Tensor::from_vec(idx, self.order.len(), device)?)
    }
}

/// The linear layers of one FFN block with `n` hidden neurons and model width `d`:
/// `up` (weight `[n, d]`, bias `[n]`), optional `gate` (`[n, d]`, bias `[n]`) and `down`
/// (`[d, n]`, bias `[d]`); biases optional. Construction checks these shapes, so every
/// permutation of the right length applies.
///
/// ```
/// use candle_compress::sparse::{FfnLinears, NeuronStats};
/// use candle_core::{Device, Module, Tensor};
/// use candle_nn::Linear;
///
/// let dev = Device::Cpu;
/// let (d, n) = (4, 6);
/// let up = Linear::new(Tensor::randn(0f32, 1., (n, d), &dev)?, Some(Tensor::randn(0f32, 1., n, &dev)?));
/// let down = Linear::new(Tensor::randn(0f32, 1., (d, n), &dev)?, None);
/// let ffn = FfnLinears::new(up, None, down)?;
/// let x = Tensor::randn(0f32, 1., (3, d), &dev)?;
/// let run = |f: &FfnLinears| -> candle_core::Result<Tensor> {
///     f.down().forward(&f.up().forward(&x)?.relu()?)
/// };
///
/// let mut stats = NeuronStats::new(n, 0.0)?;
/// stats.record_activations(&ffn.up().forward(&x)?.relu()?)?;
/// let hot = stats.hot_top_fraction(0.5)?;
/// let (fast, perm) = ffn.hot_first(&hot)?;
/// assert_eq!(&perm.order()[..3], hot.indices());
/// let diff = (run(&ffn)? - run(&fast)?)?.abs()?.max_all()?.to_scalar::<f32>()?;
/// assert!(diff < 1e-4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct FfnLinears {
    up: Linear,
    gate: Option<Linear>,
    down: Linear,
    n_neurons: usize,
    d_model: usize,
}

fn rank2(t: &Tensor, what: &str, expected: &str) -> Result<(usize, usize)> {
    match *t.dims() {
        [a, b] if a > 0 && b > 0 => Ok((a, b)),
        ref dims => Err(Error::ShapeMismatch {
            what: what.into(),
            expected: expected.into(),
            found: format!("{dims:?}"),
        }),
    }
}

fn check_bias(lin: &Linear, what: &str, len: usize) -> Result<()> {
    match lin.bias() {
        Some(b) if b.dims() != [len] => Err(Error::shape(what, [len], b.dims())),
        _ => Ok(()),
    }
}

impl FfnLinears {
    /// Checks and groups the layers of one FFN (see the type docs for the shapes).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming the layer and the expected and found shapes when a
    /// weight is not rank 2 with non-zero dims, `gate` differs from `up`, `down` is not
    /// `[d, n]`, or a bias has the wrong length.
    pub fn new(up: Linear, gate: Option<Linear>, down: Linear) -> Result<Self> {
        let (n, d) = rank2(up.weight(), "FFN up weight", "[n > 0, d > 0]")?;
        if let Some(g) = &gate {
            if g.weight().dims() != [n, d] {
                return Err(Error::shape(
                    "FFN gate weight (same as up)",
                    [n, d],
                    g.weight().dims(),
                ));
            }
            check_bias(g, "FFN gate bias", n)?;
        }
        if down.weight().dims() != [d, n] {
            return Err(Error::shape(
                "FFN down weight ([d, n] for up [n, d])",
                [d, n],
                down.weight().dims(),
            ));
        }
        check_bias(&up, "FFN up bias", n)?;
        check_bias(&down, "FFN down bias", d)?;
        Ok(Self {
            up,
            gate,
            down,
            n_neurons: n,
            d_model: d,
        })
    }

    /// The up projection (`[n, d]`).
    #[must_use]
    pub fn up(&self) -> &Linear {
        &self.up
    }

    /// The gate projection (`[n, d]`), if the FFN is gated.
    #[must_use]
    pub fn gate(&self) -> Option<&Linear> {
        self.gate.as_ref()
    }

    /// The down projection (`[d, n]`).
    #[must_use]
    pub fn down(&self) -> &Linear {
        &self.down
    }

    /// Hidden neurons `n`.
    #[must_use]
    pub fn n_neurons(&self) -> usize {
        self.n_neurons
    }

    /// Model width `d`.
    #[must_use]
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// The layers, as `(up, gate, down)`.
    #[must_use]
    pub fn into_parts(self) -> (Linear, Option<Linear>, Linear) {
        (self.up, self.gate, self.down)
    }

    /// The same FFN with its neurons reordered: new neuron `p` is old neuron
    /// `perm.order()[p]`. Rows of `up`/`gate` and their biases and columns of `down` move;
    /// `down`'s bias does not. Weights keep their dtype and device and come out contiguous.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `perm.len() != n_neurons()`; candle errors from
    /// `index_select`.
    pub fn permuted(&self, perm: &NeuronPermutation) -> Result<Self> {
        if perm.len() != self.n_neurons {
            return Err(Error::shape(
                "neuron permutation length (FFN hidden size)",
                self.n_neurons,
                perm.len(),
            ));
        }
        let idx = perm.index_tensor(self.up.weight().device())?;
        let rows = |lin: &Linear| -> Result<Linear> {
            let w = lin.weight().index_select(&idx, 0)?;
            let b = lin.bias().map(|b| b.index_select(&idx, 0)).transpose()?;
            Ok(Linear::new(w, b))
        };
        let up = rows(&self.up)?;
        let gate = self.gate.as_ref().map(rows).transpose()?;
        let down = Linear::new(
            self.down.weight().index_select(&idx, 1)?,
            self.down.bias().cloned(),
        );
        Ok(Self {
            up,
            gate,
            down,
            n_neurons: self.n_neurons,
            d_model: self.d_model,
        })
    }

    /// Puts the hot neurons first (see [`HotSet::permutation`]): returns the permuted FFN,
    /// whose hot weights are rows `0..hot.len()` of `up`/`gate` and columns
    /// `0..hot.len()` of `down`, and the permutation used.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `hot.n_neurons() != n_neurons()`; as
    /// [`FfnLinears::permuted`].
    pub fn hot_first(&self, hot: &HotSet) -> Result<(Self, NeuronPermutation)> {
        if hot.n_neurons() != self.n_neurons {
            return Err(Error::shape(
                "hot set neurons (FFN hidden size)",
                self.n_neurons,
                hot.n_neurons(),
            ));
        }
        let perm = hot.permutation();
        Ok((self.permuted(&perm)?, perm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_undoes_and_apply_checks_length() -> Result<()> {
        let p = NeuronPermutation::from_order(vec![3, 1, 0, 2])?;
        let v = [10, 11, 12, 13];
        let pv = p.apply(&v)?;
        assert_eq!(pv, vec![13, 11, 10, 12]);
        assert_eq!(p.inverse().apply(&pv)?, v.to_vec());
        assert!(matches!(p.apply(&[1, 2]), Err(Error::ShapeMismatch { .. })));
        assert!(NeuronPermutation::from_order(vec![]).is_err());
        assert!(NeuronPermutation::from_order(vec![0, 2]).is_err());
        Ok(())
    }
}
