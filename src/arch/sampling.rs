//! Multinomial resampling of a mixed layer's path.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tch::kind::Element;
use tch::{Kind, TchError, Tensor};

use crate::arch::gradient::host_slice;
use crate::errors::in_context;
use crate::interop::tree::PyTensor;

/// Draws one index from the categorical distribution `probs` (1-d, non-negative).
///
/// Uses libtorch's `multinomial` on `probs`' device with the default generator, so that
/// under the same `torch.manual_seed` it draws exactly what `torch.multinomial(probs, 1)`
/// draws in NNI. Reading the index back is the one host synchronisation per step that a
/// sampled architecture needs.
#[pyfunction]
pub fn sample_index(probs: PyTensor) -> PyResult<i64> {
    if probs.dim() != 1 || probs.size()[0] == 0 {
        return Err(PyValueError::new_err(format!(
            "sample_index expects a non-empty 1-d tensor of probabilities, got shape {:?}",
            probs.size()
        )));
    }
    draw(&probs).map_err(in_context("sample_index"))
}

/// See [`sample_index`]; libtorch refuses probabilities that are negative, NaN or infinite.
pub fn draw(probs: &Tensor) -> Result<i64, TchError> {
    probs.f_multinomial(1, false)?.f_int64_value(&[0])
}

/// Two distinct indices from `probs` (`torch.multinomial(probs, 2, replacement=False)`).
pub fn draw_pair(probs: &Tensor) -> Result<(i64, i64), TchError> {
    let drawn = probs.f_multinomial(2, false)?;
    Ok((drawn.f_int64_value(&[0])?, drawn.f_int64_value(&[1])?))
}

/// `n` distinct indices (1 or 2) from `probs`, a softmax's output, exactly as
/// `torch.multinomial(probs, n, replacement=False)` draws them; `None` when `probs` holds a NaN
/// (the logits held NaN or infinities).
///
/// Why not `multinomial` itself: for one sample, or any number without replacement, libtorch
/// draws `q ~ Exp(1)` (`empty_like(probs).exponential_(1)` on the default generator) and takes
/// the argmax (top-k) of `probs / q`, after checking the probabilities with nine more ops and
/// three host reads (max, min, sum), about half of a draw's cost in an overhead-bound search.
/// The same ops on the same generator draw the same indices (the regression tests compare every
/// draw with NNI's `torch.multinomial` under the same seeds, at both ends of the torch span). A
/// softmax's output needs one check only: it is never negative and sums to 1 unless it holds a
/// NaN, and a NaN is always the largest `probs / q`, so reading the drawn quotient says it.
///
/// One index from a contiguous host tensor is taken on the host from the same draws: the
/// quotients are the same IEEE divisions, and the argmax the first largest one (a NaN: `None`),
/// without the five dispatches of the division, the argmax and the reads. One index from any
/// other 1-d tensor (two-path mode's pick of the pair on a GPU, say; a one-path draw from alpha
/// there takes [`DrawCache::draw_one`]) divides there and copies the quotients to the host, where the
/// same argmax is taken: one read back a draw, where the argmax on the device and reading its
/// index and then that quotient (for a NaN) were a kernel and two reads, each waiting for the
/// device.
///
/// The exponential draws go into `buffer` where it has `probs`' size, dtype and device (the last
/// draw's; `exponential_` on it takes the same numbers from the generator as on a new tensor).
pub fn draw_from_softmax(probs: &Tensor, n: i64, buffer: &mut Option<Tensor>) -> Result<Option<Vec<i64>>, TchError> {
    let reusable = buffer
        .as_ref()
        .is_some_and(|b| b.kind() == probs.kind() && b.device() == probs.device() && b.size() == probs.size());
    if !reusable {
        *buffer = Some(probs.f_empty_like()?);
    }
    let exponential = buffer.as_mut().expect("set above");
    let _ = exponential.f_exponential_(1.0)?;
    let exponential = &*exponential;
    if n == 1 {
        let host = match probs.kind() {
            Kind::Float => host_argmax_quotient::<f32>(probs, exponential),
            Kind::Double => host_argmax_quotient::<f64>(probs, exponential),
            _ => None,
        };
        if let Some(drawn) = host {
            return Ok(drawn.map(|index| vec![index]));
        }
        if probs.dim() == 1 {
            return Ok(argmax_quotient_read_back(probs, exponential)?.map(|index| vec![index]));
        }
    }
    let quotient = probs.f_div(exponential)?;
    let drawn = if n == 1 { quotient.f_argmax(-1, false)?.f_view([1])? } else { quotient.f_topk(n, -1, true, true)?.1 };
    let drawn = drawn.f_to_device(tch::Device::Cpu)?;
    let drawn = (0..n).map(|i| drawn.f_int64_value(&[i])).collect::<Result<Vec<_>, _>>()?;
    let largest = quotient.f_double_value(&[drawn[0]])?;
    Ok(if largest.is_nan() { None } else { Some(drawn) })
}

/// softmax(alpha) of a choice's last draw, kept while alpha holds the same values, and the buffer
/// of its exponential draws (see [`draw_from_softmax`]): a weight step draws from an alpha that
/// no step has changed since the last draw (warm-up epochs, and the architecture step's draw after
/// a weight step), and recomputing its softmax was an eighth of a draw's cost.
///
/// Kept for a contiguous host alpha of float or double only, compared bit for bit, so a kept
/// softmax is the one libtorch would compute now and the draws stay NNI's under the same seeds.
/// On another device, reading alpha would be a host round trip per draw: computed each time.
#[derive(Default)]
pub struct DrawCache {
    /// alpha's dtype and bytes when `probs` was computed.
    alpha: Option<(Kind, Vec<u8>)>,
    /// The kept softmax: a tensor the softmax returned to this cache, held by it alone (a draw
    /// borrows it and drops it).
    probs: Option<Tensor>,
    /// The exponential draws' buffer ([`draw_from_softmax`]), held by this cache alone.
    exponential: Option<Tensor>,
    /// The memory of `probs` and `exponential` where both are host vectors of one dtype and length,
    /// checked once when they became a pair (None until then, and after either is replaced).
    host: Option<HostPair>,
    /// The one-path draws' buffer off the host path ([`DrawCache::draw_one`]), held by this cache alone.
    off_host: Option<OffHostPair>,
}

/// softmax(alpha) and the exponential draws side by side in one tensor of alpha's dtype and device
/// (`[probs | exponential]`), and its two halves as views: one copy brings both to the host.
struct OffHostPair {
    buffer: Tensor,
    probs: Tensor,
    exponential: Tensor,
}

/// Two contiguous 1-d host tensors of `kind` (float or double) and `len` elements, by address.
/// Why addresses: checking a tensor through tch is a dozen calls across the C API (device, dtype,
/// layout, shape, ...), three tensors a draw, about a third of a draw's instructions; the
/// cache's own two tensors cannot change under it, so they are checked once.
#[derive(Clone, Copy)]
struct HostPair {
    kind: Kind,
    probs: usize,
    exponential: usize,
    len: usize,
}

impl DrawCache {
    /// `softmax(alpha)` by `softmax`, or the kept result where alpha's values are those it was
    /// computed from.
    pub fn probs<E>(
        &mut self,
        alpha: &Tensor,
        softmax: impl FnOnce(&Tensor) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        self.probs_of_bytes(alpha, host_bytes(alpha), softmax)
    }

    /// One index from `softmax(alpha, dim)` (`nn.Softmax(dim)`), as
    /// `torch.multinomial(softmax(alpha), 1)` draws it; None where the softmax holds a NaN.
    ///
    /// A contiguous host alpha of float or double draws from the kept softmax ([`DrawCache::probs`],
    /// [`DrawCache::draw`]). Any other 1-d float or double alpha (on a GPU, say) computes the
    /// softmax and the exponential draws into the two halves of one buffer and copies it to the
    /// host, where the quotients are divided and the first largest taken: two kernels and one read
    /// back a draw, where the softmax, the exponential draws and the division were three kernels
    /// before the read back (on an H200 at 9 to 13 µs a launch, most of a draw's time). The same numbers:
    /// the softmax of an `out=` call is the same kernel's; `exponential_` on a contiguous half of
    /// the buffer takes from the generator what it takes on a tensor of its own; and the host's
    /// IEEE division of float or double rounds as the device's does.
    pub fn draw_one(&mut self, alpha: &Tensor, dim: i64) -> Result<Option<i64>, TchError> {
        let bytes = host_bytes(alpha);
        if bytes.is_none() && alpha.dim() == 1 && matches!(alpha.kind(), Kind::Float | Kind::Double) {
            return self.draw_off_host(alpha, dim);
        }
        let probs = self.probs_of_bytes(alpha, bytes, |alpha| alpha.f_softmax(dim, None::<Kind>))?;
        Ok(self.draw(&probs, 1)?.map(|drawn| drawn[0]))
    }

    /// [`DrawCache::draw_one`] for a 1-d float or double alpha off the host path.
    fn draw_off_host(&mut self, alpha: &Tensor, dim: i64) -> Result<Option<i64>, TchError> {
        let (kind, device, n) = (alpha.kind(), alpha.device(), alpha.size()[0]);
        if n == 0 {
            return Err(TchError::Shape("a draw from an empty alpha".to_owned()));
        }
        let reusable = self.off_host.as_ref().is_some_and(|pair| {
            pair.buffer.kind() == kind && pair.buffer.device() == device && pair.probs.size() == [n]
        });
        if !reusable {
            let buffer = Tensor::f_empty([2 * n], (kind, device))?;
            let (probs, exponential) = (buffer.f_slice(0, 0, n, 1)?, buffer.f_slice(0, n, 2 * n, 1)?);
            self.off_host = Some(OffHostPair { buffer, probs, exponential });
        }
        let pair = self.off_host.as_mut().expect("set above");
        let _ = alpha.f_softmax_int_out(&pair.probs, dim, None::<Kind>)?;
        let _ = pair.exponential.f_exponential_(1.0)?;
        let host = pair.buffer.f_to_device(tch::Device::Cpu)?;
        let n = n as usize;
        let drawn = match kind {
            Kind::Float => host_slice::<f32>(&host).map(|v| argmax_quotient(&v[..n], &v[n..])),
            _ => host_slice::<f64>(&host).map(|v| argmax_quotient(&v[..n], &v[n..])),
        };
        drawn.ok_or_else(|| TchError::Shape(format!("the host copy of a draw's buffer of shape {:?}", host.size())))
    }

    /// [`DrawCache::probs`] where `bytes` is `host_bytes(alpha)`.
    fn probs_of_bytes<E>(
        &mut self,
        alpha: &Tensor,
        bytes: Option<&[u8]>,
        softmax: impl FnOnce(&Tensor) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let Some(bytes) = bytes else {
            self.forget_probs();
            return softmax(alpha);
        };
        let kind = alpha.kind();
        if let (Some((kept_kind, kept)), Some(probs)) = (&self.alpha, &self.probs) {
            if *kept_kind == kind && kept.as_slice() == bytes {
                return Ok(probs.shallow_clone());
            }
        }
        self.forget_probs();
        let probs = softmax(alpha)?;
        self.alpha = Some((kind, bytes.to_vec()));
        self.probs = Some(probs.shallow_clone());
        Ok(probs)
    }

    fn forget_probs(&mut self) {
        self.alpha = None;
        self.probs = None;
        self.host = None;
    }

    /// [`draw_from_softmax`] with this cache's buffer. One index from the kept softmax, once it and
    /// the buffer have been checked as a host pair, is drawn with one call into libtorch (the
    /// exponential draws) and the argmax on their memory.
    pub fn draw(&mut self, probs: &Tensor, n: i64) -> Result<Option<Vec<i64>>, TchError> {
        if n == 1 {
            if let (Some(pair), Some(buffer)) = (self.host, self.exponential.as_mut()) {
                // The kept softmax: no other live tensor starts at its memory, since this cache
                // holds it and never makes a view of it.
                if probs.data_ptr() as usize == pair.probs {
                    let _ = buffer.f_exponential_(1.0)?;
                    // SAFETY: the pair's tensors are the cache's own, alive and never resized.
                    let drawn = unsafe {
                        match pair.kind {
                            Kind::Float => pair.argmax::<f32>(),
                            _ => pair.argmax::<f64>(),
                        }
                    };
                    return Ok(drawn.map(|index| vec![index]));
                }
            }
        }
        let drawn = draw_from_softmax(probs, n, &mut self.exponential)?;
        // The buffer may have been replaced. Paired again only after a one-path draw from the kept
        // softmax (the buffer then has its size): two-path mode's draws, of size n and then 2,
        // never pair, and so never pay for the checks.
        let from_kept = self.probs.as_ref().is_some_and(|kept| kept.data_ptr() == probs.data_ptr());
        self.host = if n == 1 && from_kept { self.host_pair() } else { None };
        Ok(drawn)
    }

    /// The kept softmax and the buffer as a [`HostPair`], where they are one.
    fn host_pair(&self) -> Option<HostPair> {
        let (probs, exponential) = (self.probs.as_ref()?, self.exponential.as_ref()?);
        fn pair<T: Element>(probs: &Tensor, exponential: &Tensor) -> Option<HostPair> {
            host_vectors::<T>(probs, exponential).map(|(p, q)| HostPair {
                kind: T::KIND,
                probs: p.as_ptr() as usize,
                exponential: q.as_ptr() as usize,
                len: p.len(),
            })
        }
        match probs.kind() {
            Kind::Float => pair::<f32>(probs, exponential),
            Kind::Double => pair::<f64>(probs, exponential),
            _ => None,
        }
    }
}

impl HostPair {
    /// `argmax(probs / exponential)` on the pair's memory ([`argmax_quotient`]).
    ///
    /// # Safety
    /// `T` is the pair's `kind`, and its two tensors are alive and unresized since it was made.
    unsafe fn argmax<T: Copy + PartialOrd + std::ops::Div<Output = T> + Into<f64>>(&self) -> Option<i64> {
        let (p, q) = (self.probs as *const T, self.exponential as *const T);
        argmax_quotient(std::slice::from_raw_parts(p, self.len), std::slice::from_raw_parts(q, self.len))
    }
}

/// The bytes of a contiguous 1-d host tensor of float or double (None for any other).
fn host_bytes(t: &Tensor) -> Option<&[u8]> {
    if t.dim() != 1 {
        return None;
    }
    fn bytes<T: Element>(s: &[T]) -> &[u8] {
        // SAFETY: the same memory as `s`, read as bytes (float and double have no padding).
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
    }
    match t.kind() {
        Kind::Float => host_slice::<f32>(t).map(bytes),
        Kind::Double => host_slice::<f64>(t).map(bytes),
        _ => None,
    }
}

/// `argmax(probs / exponential)` of two contiguous 1-d host tensors of `T`, as libtorch's argmax
/// takes it (the first of equal largest values), `Some(None)` if a quotient is NaN; `None` where
/// the tensors are not such (the tensor ops then run).
fn host_argmax_quotient<T: Element + Copy + PartialOrd + std::ops::Div<Output = T> + Into<f64>>(
    probs: &Tensor,
    exponential: &Tensor,
) -> Option<Option<i64>> {
    host_vectors::<T>(probs, exponential).map(|(p, q)| argmax_quotient(p, q))
}

/// `argmax(probs / exponential)` of two 1-d tensors of one length on any device and of any float
/// dtype: the quotients there, then one copy to the host, where the first largest is taken (None
/// if one is NaN). The doubles hold each quotient exactly, so their order and ties are the
/// tensors'.
fn argmax_quotient_read_back(probs: &Tensor, exponential: &Tensor) -> Result<Option<i64>, TchError> {
    let quotient = probs.f_div(exponential)?.f_to_device(tch::Device::Cpu)?.f_to_kind(Kind::Double)?.f_contiguous()?;
    let values = host_slice::<f64>(&quotient)
        .filter(|values| !values.is_empty())
        .ok_or_else(|| TchError::Shape(format!("a draw from probabilities of shape {:?}", probs.size())))?;
    Ok(first_largest(values.iter().copied()))
}

/// The index of the first largest of `values` (libtorch's argmax keeps the first of equal
/// largest values), None if one is NaN or there are none.
fn first_largest<T: Copy + PartialOrd + Into<f64>>(values: impl IntoIterator<Item = T>) -> Option<i64> {
    let mut values = values.into_iter().enumerate();
    let mut best = values.next()?;
    if best.1.into().is_nan() {
        return None;
    }
    for (i, value) in values {
        if value.into().is_nan() {
            return None;
        }
        if value > best.1 {
            best = (i, value);
        }
    }
    Some(best.0 as i64)
}

/// Two contiguous 1-d host tensors of `T` of one non-empty length, as slices (None for any other).
fn host_vectors<'a, T: Element>(probs: &'a Tensor, exponential: &'a Tensor) -> Option<(&'a [T], &'a [T])> {
    if probs.dim() != 1 {
        return None;
    }
    let (p, q) = (host_slice::<T>(probs)?, host_slice::<T>(exponential)?);
    (!p.is_empty() && p.len() == q.len()).then_some((p, q))
}

/// `argmax(p / q)` of two slices of equal length ([`first_largest`] of the quotients).
fn argmax_quotient<T: Copy + PartialOrd + std::ops::Div<Output = T> + Into<f64>>(p: &[T], q: &[T]) -> Option<i64> {
    first_largest(p.iter().zip(q).map(|(&p, &q)| p / q))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The tensor form the host loop replaces: argmax of `probs / exponential`, NaN as None.
    fn tensor_draw(probs: &Tensor, exponential: &Tensor) -> Option<i64> {
        let quotient = probs.f_div(exponential).unwrap();
        let index = quotient.argmax(-1, false).int64_value(&[]);
        if quotient.double_value(&[index]).is_nan() {
            None
        } else {
            Some(index)
        }
    }

    #[test]
    fn host_draw_is_the_tensor_draw() {
        let _generator = crate::testing::seeded(0);
        for kind in [Kind::Float, Kind::Double] {
            for seed in 0..200 {
                tch::manual_seed(seed);
                let n = 1 + seed % 9;
                let probs = (Tensor::randn([n], (kind, Device::Cpu)) * 3.0).softmax(0, None::<Kind>);
                let exponential = probs.empty_like().exponential_(1.0);
                let host = match kind {
                    Kind::Float => host_argmax_quotient::<f32>(&probs, &exponential),
                    _ => host_argmax_quotient::<f64>(&probs, &exponential),
                };
                assert_eq!(host, Some(tensor_draw(&probs, &exponential)), "{kind:?}, seed {seed}");
            }
            // Ties take the first index; a NaN anywhere gives None.
            let probs = Tensor::from_slice(&[0.25f64, 0.5, 0.5, 0.25]).to_kind(kind);
            let ones = probs.ones_like();
            assert_eq!(tensor_draw(&probs, &ones), Some(1));
            let host = |p: &Tensor| match kind {
                Kind::Float => host_argmax_quotient::<f32>(p, &ones),
                _ => host_argmax_quotient::<f64>(p, &ones),
            };
            assert_eq!(host(&probs), Some(Some(1)));
            let nan = Tensor::from_slice(&[0.25f64, f64::NAN, 0.5, 0.25]).to_kind(kind);
            assert_eq!(host(&nan), Some(None));
            assert_eq!(tensor_draw(&nan, &ones), None);
        }
    }

    #[test]
    fn the_read_back_draw_is_the_tensor_draw() {
        // Tensors the host loop does not take (a strided view, half precision) divide on their
        // device and take the argmax of the copied quotients: what the tensor ops take.
        let _generator = crate::testing::seeded(0);
        for kind in [Kind::Float, Kind::Double, Kind::Half] {
            for seed in 0..200 {
                tch::manual_seed(seed);
                let n = 1 + seed % 9;
                let wide = (Tensor::randn([2 * n], (Kind::Double, Device::Cpu)) * 3.0).softmax(0, None::<Kind>);
                let probs = wide.to_kind(kind).slice(0, 0, 2 * n, 2);
                assert!(!probs.is_contiguous() || n == 1);
                let exponential = probs.empty_like().exponential_(1.0);
                let drawn = argmax_quotient_read_back(&probs, &exponential).unwrap();
                assert_eq!(drawn, tensor_draw(&probs, &exponential), "{kind:?}, seed {seed}");
            }
            let ones = Tensor::ones([4], (kind, Device::Cpu));
            let ties = Tensor::from_slice(&[0.25f64, 0.5, 0.5, 0.25]).to_kind(kind);
            assert_eq!(argmax_quotient_read_back(&ties, &ones).unwrap(), Some(1));
            let nan = Tensor::from_slice(&[0.25f64, f64::NAN, 0.5, 0.25]).to_kind(kind);
            assert_eq!(argmax_quotient_read_back(&nan, &ones).unwrap(), None);
        }
        // Through draw_from_softmax: a strided view of probabilities draws what a contiguous copy
        // of it draws under the same seed (the host loop for one, the read back for the other).
        for seed in 0..50 {
            let wide = (Tensor::randn([14], (Kind::Float, Device::Cpu)) * 3.0).softmax(0, None::<Kind>);
            let strided = wide.slice(0, 0, 14, 2);
            tch::manual_seed(seed);
            let a = draw_from_softmax(&strided, 1, &mut None).unwrap();
            tch::manual_seed(seed);
            let b = draw_from_softmax(&strided.contiguous(), 1, &mut None).unwrap();
            assert_eq!(a, b, "seed {seed}");
        }
    }

    #[test]
    fn draw_one_draws_what_multinomial_draws() {
        // torch.multinomial(softmax(alpha), 1) under the same seed, for a host alpha (the kept
        // softmax) and a strided one (softmax and exponential draws into one buffer, divided on the
        // host), float and double, alpha changing and changing size; NaN as None on both paths.
        let _generator = crate::testing::seeded(0);
        for kind in [Kind::Float, Kind::Double] {
            let mut cache = DrawCache::default();
            for seed in 0..150 {
                let n = [7, 7, 7, 3][(seed / 40) as usize];
                tch::manual_seed(1000 + seed % 11); // alpha repeats, so the host path keeps its softmax
                let wide = Tensor::randn([2 * n], (kind, Device::Cpu)) * 2.0;
                let strided = wide.slice(0, 0, 2 * n, 2);
                let contiguous = strided.contiguous();
                let (alpha, off_host) = if seed % 2 == 0 { (&strided, true) } else { (&contiguous, false) };
                tch::manual_seed(seed);
                let expected = contiguous.softmax(-1, None::<Kind>).multinomial(1, false).int64_value(&[0]);
                tch::manual_seed(seed);
                assert_eq!(cache.draw_one(alpha, -1).unwrap(), Some(expected), "{kind:?}, seed {seed}");
                assert_eq!(cache.off_host.is_some(), off_host || seed > 0, "{kind:?}, seed {seed}");
            }
            for alpha in [
                Tensor::full([6], f64::NAN, (kind, Device::Cpu)).slice(0, 0, 6, 2),
                Tensor::full([3], f64::NAN, (kind, Device::Cpu)),
            ] {
                assert_eq!(cache.draw_one(&alpha, -1).unwrap(), None, "{kind:?}, NaN");
            }
        }
    }

    #[test]
    fn a_reused_buffer_draws_what_a_new_one_draws() {
        let _generator = crate::testing::seeded(0);
        for kind in [Kind::Float, Kind::Double] {
            let probs = Tensor::from_slice(&[0.1f64, 0.2, 0.3, 0.4]).to_kind(kind);
            let mut buffer = None;
            for seed in 0..50 {
                for n in [1, 2] {
                    tch::manual_seed(seed);
                    let fresh = draw_from_softmax(&probs, n, &mut None).unwrap();
                    tch::manual_seed(seed);
                    let reused = draw_from_softmax(&probs, n, &mut buffer).unwrap();
                    assert_eq!(fresh, reused, "{kind:?}, seed {seed}, n {n}");
                }
            }
            // A buffer of another size is replaced, not used.
            let three = Tensor::from_slice(&[0.2f64, 0.3, 0.5]).to_kind(kind);
            draw_from_softmax(&three, 1, &mut buffer).unwrap();
            assert_eq!(buffer.as_ref().unwrap().size(), vec![3]);
        }
    }

    #[test]
    fn a_cache_draws_what_a_new_buffer_draws() {
        // The cache's draws (the host pair's path once paired) against draw_from_softmax on a new
        // buffer, seed by seed: alpha unchanged, changed in place, two-path mode's alternation of
        // a size-n and a size-2 draw, another dtype, and NaN.
        let _generator = crate::testing::seeded(0);
        let softmax = |alpha: &Tensor| -> Result<Tensor, TchError> { alpha.f_softmax(0, None::<Kind>) };
        for kind in [Kind::Float, Kind::Double] {
            let mut cache = DrawCache::default();
            let mut paired = 0;
            let mut alpha = Tensor::from_slice(&[0.3f64, -0.2, 0.9, 0.0, 0.1]).to_kind(kind);
            for seed in 0..120 {
                if seed % 7 == 3 {
                    let _ = alpha.f_add_(&(alpha.randn_like() * 0.5)).unwrap();
                }
                let probs = cache.probs(&alpha, softmax).unwrap();
                let draws: &[(Tensor, i64)] = if seed % 5 == 4 {
                    &[(probs.shallow_clone(), 2), (softmax(&alpha.slice(0, 1, 3, 1)).unwrap(), 1)]
                } else {
                    &[(probs.shallow_clone(), 1)]
                };
                for (p, n) in draws {
                    tch::manual_seed(seed);
                    let fresh = draw_from_softmax(p, *n, &mut None).unwrap();
                    paired += usize::from(*n == 1 && cache.host.is_some_and(|h| h.probs == p.data_ptr() as usize));
                    tch::manual_seed(seed);
                    assert_eq!(cache.draw(p, *n).unwrap(), fresh, "{kind:?}, seed {seed}, n {n}");
                }
            }
            assert!(paired > 60, "{kind:?}: {paired} draws of 120 on the host pair");
            let _ = alpha.f_fill_(f64::NAN).unwrap();
            let probs = cache.probs(&alpha, softmax).unwrap();
            assert_eq!(cache.draw(&probs, 1).unwrap(), None);
            assert_eq!(cache.draw(&probs, 1).unwrap(), None, "{kind:?}: NaN on the host pair");
        }
    }

    #[test]
    fn the_kept_softmax_is_the_one_of_alpha_now() {
        let softmax = |alpha: &Tensor| -> Result<Tensor, TchError> { alpha.f_softmax(0, None::<Kind>) };
        let mut cache = DrawCache::default();
        let mut alpha = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
        let first = cache.probs(&alpha, softmax).unwrap();
        // Same values: the kept tensor (no call of the softmax).
        let kept = cache.probs(&alpha, |_| -> Result<Tensor, TchError> { panic!("recomputed") }).unwrap();
        assert_eq!(kept.data_ptr(), first.data_ptr());
        // Values changed in place (an optimizer step): computed again, and right.
        let _ = alpha.f_add_scalar_(1e-3).unwrap();
        let changed = cache.probs(&alpha, softmax).unwrap();
        assert_ne!(changed.data_ptr(), first.data_ptr());
        assert!(changed.allclose(&softmax(&alpha).unwrap(), 0.0, 0.0, false));
        // The same bytes as another dtype, and a strided alpha, are never taken from the cache.
        let double = Tensor::from_slice(&[0.5f64, -1.0, 2.0, 0.0]);
        let probs = cache.probs(&double, softmax).unwrap();
        assert_eq!(probs.kind(), Kind::Double);
        let strided = Tensor::from_slice(&[0.5f32, 9.0, -1.0, 9.0, 2.0, 9.0]).slice(0, 0, 6, 2);
        let called = std::cell::Cell::new(0);
        let counted = |a: &Tensor| {
            called.set(called.get() + 1);
            softmax(a)
        };
        let (once, twice) = (cache.probs(&strided, counted).unwrap(), cache.probs(&strided, counted).unwrap());
        assert!(once.allclose(&twice, 0.0, 0.0, false));
        assert_eq!(called.get(), 2);
    }
}
