//! One block's KV cache, written in place.
//!
//! Keys (after RoPE) and values are kept as `[n_kv_head, capacity, head_dim]` tensors of
//! which the first `len` positions are filled. A forward step writes its new positions
//! into them (`Tensor::slice_set`) and reads back a view of the filled part, instead of
//! concatenating the whole cache into a new tensor each step: at a few hundred tokens of
//! context that concatenation moved about a tenth of a decoded token's bytes. The
//! capacity grows by [`CHUNK`] positions at a time.

use candle_core::{Result, Tensor};

/// Positions added whenever the cache is full (0.4 MB per block for SmolLM2-135M).
const CHUNK: usize = 512;

/// Keys and values of one block. A clone starts empty.
#[derive(Debug, Default)]
pub struct KvCache {
    /// `(keys, values)`, `[n_kv_head, capacity, head_dim]` each; `None` before the first
    /// step.
    data: Option<(Tensor, Tensor)>,
    /// Filled positions.
    len: usize,
}

impl KvCache {
    /// Appends `k` and `v` (`[n_kv_head, t, head_dim]` each, contiguous f32) after the
    /// cached positions and returns views of every filled position, `[n_kv_head, len + t,
    /// head_dim]` each (not contiguous along the position axis once the capacity exceeds
    /// the length: row stride `head_dim`, head stride `capacity · head_dim`).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, t, hd) = k.dims3()?;
        if v.dims3()? != (heads, t, hd) {
            candle_core::bail!(
                "kv cache: keys {:?} and values {:?} differ",
                k.dims(),
                v.dims()
            );
        }
        let need = self.len + t;
        let (ck, cv) = match &self.data {
            Some((ck, cv)) if ck.dim(1)? >= need => (ck.clone(), cv.clone()),
            old => {
                let grown = need.next_multiple_of(CHUNK);
                let alloc = || Tensor::zeros((heads, grown, hd), k.dtype(), k.device());
                let (nk, nv) = (alloc()?, alloc()?);
                if let Some((ok, ov)) = old {
                    nk.slice_set(&ok.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    nv.slice_set(&ov.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                self.data = Some((nk.clone(), nv.clone()));
                (nk, nv)
            }
        };
        ck.slice_set(k, 1, self.len)?;
        cv.slice_set(v, 1, self.len)?;
        self.len = need;
        Ok((ck.narrow(1, 0, need)?, cv.narrow(1, 0, need)?))
    }

    /// Forgets the cached positions (keeps the allocation).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

impl Clone for KvCache {
    /// An empty cache: a clone must not share the storage the original goes on writing
    /// in place (see [`Llama`](crate::model::Llama)'s `Clone`).
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Appends in steps that cross the chunk boundary twice equal one concatenation, and
    /// `clear` starts over.
    #[test]
    fn appends_equal_concatenation_across_growth() -> Result<()> {
        let (heads, hd) = (3, 4);
        let mut cache = KvCache::default();
        let mut all_k: Vec<Tensor> = Vec::new();
        let mut all_v: Vec<Tensor> = Vec::new();
        let mut seed = 0f32;
        for t in [300, 1, 1, 400, 7, 600] {
            let k = Tensor::arange(seed, seed + (heads * t * hd) as f32, &Device::Cpu)?
                .reshape((heads, t, hd))?;
            let v = (k.clone() * -0.5)?;
            seed += 10_000.0;
            all_k.push(k.clone());
            all_v.push(v.clone());
            let (ck, cv) = cache.append(&k, &v)?;
            let (wk, wv) = (Tensor::cat(&all_k, 1)?, Tensor::cat(&all_v, 1)?);
            assert_eq!(ck.dims(), wk.dims());
            let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
            };
            assert_eq!(diff(&ck, &wk)?, 0.0);
            assert_eq!(diff(&cv, &wv)?, 0.0);
        }
        cache.clear();
        let k = Tensor::ones((heads, 2, hd), candle_core::DType::F32, &Device::Cpu)?;
        let (ck, _) = cache.append(&k, &k)?;
        assert_eq!(ck.dims(), &[heads, 2, hd]);
        assert!(cache.clone().data.is_none(), "a clone starts empty");
        assert!(cache.append(&k, &k.narrow(1, 0, 1)?).is_err());
        Ok(())
    }
}
