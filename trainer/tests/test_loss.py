"""The chunked head cross-entropy equals the plain one, values and gradients."""
import unittest

import torch
import torch.nn.functional as F

from carryon_train.loss import auto_chunk_rows, head_cross_entropy


class ChunkedLossTest(unittest.TestCase):
    def setUp(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.z = torch.randn(37, 16, generator=g, dtype=torch.float64)
        self.w = torch.randn(50, 16, generator=g, dtype=torch.float64)
        self.t = torch.randint(0, 50, (37,), generator=g)
        self.weights = torch.rand(37, generator=g, dtype=torch.float64)

    def grads(self, chunk, train_head: bool):
        z = self.z.clone().requires_grad_(True)
        w = self.w.clone().requires_grad_(train_head)
        losses = head_cross_entropy(z, w, self.t, chunk)
        (losses * self.weights).sum().backward()  # a non-uniform upstream gradient
        return losses.detach(), z.grad, w.grad

    def test_chunked_equals_unchunked(self) -> None:
        # Frozen head (gradient precomputed in forward) and trainable head (recomputed in backward).
        for train_head in (False, True):
            ref = self.grads(0, train_head)
            plain = F.cross_entropy(self.z @ self.w.t(), self.t, reduction="none")
            torch.testing.assert_close(ref[0], plain)
            for chunk in (1, 5, 16, 37, 100):  # chunks that do and do not divide 37
                got = self.grads(chunk, train_head)
                for a, b in zip(got, ref):
                    if b is None:
                        self.assertIsNone(a)
                    else:
                        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    def test_gradcheck(self) -> None:
        t = self.t[:6] % 7
        z = self.z[:6].clone().requires_grad_(True)
        w = self.w[:7].clone().requires_grad_(True)
        self.assertTrue(torch.autograd.gradcheck(lambda a, b: head_cross_entropy(a, b, t, 4), (z, w)))
        frozen = self.w[:7].clone()
        self.assertTrue(torch.autograd.gradcheck(lambda a: head_cross_entropy(a, frozen, t, 4), (z,)))

    def test_no_grad_evaluation(self) -> None:
        with torch.no_grad():
            got = head_cross_entropy(self.z, self.w, self.t, 8)
        torch.testing.assert_close(got, F.cross_entropy(self.z @ self.w.t(), self.t, reduction="none"))

    def test_frozen_head_gets_no_gradient(self) -> None:
        z = self.z.float().requires_grad_(True)
        w = self.w.float()
        head_cross_entropy(z, w, self.t, 8).mean().backward()
        self.assertIsNotNone(z.grad)
        self.assertIsNone(w.grad)

    def test_auto_chunk_keeps_logits_within_budget(self) -> None:
        self.assertEqual(auto_chunk_rows(49152) * 49152 * 4 <= 64 << 20, True)
        self.assertGreaterEqual(auto_chunk_rows(512), 1024)


if __name__ == "__main__":
    unittest.main()
