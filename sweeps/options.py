"""Options that were measured and not adopted, kept runnable outside the lesson.

Adversarial training on the word vectors, averaging the weights of neighbouring epochs, and an
ensemble of models from different seeds were once parameters of the lesson notebook. Their
measurements (notebooks/research_record.ipynb) did not earn them a place in it, so the lesson no
longer carries their code. Their sweep files (sweeps/adversarial_seeds.yaml,
sweeps/averaging_seeds.yaml, sweeps/ensemble_seeds.yaml) still run them: each run edits a copy
of the lesson (the sweep's `edit` list) so that its own training code calls the functions below.
tests/test_options.py checks these functions and that every edit still finds its place.
"""

import numpy as np
import torch
from torch import nn

import helpers

# --------------------------------------------------------------------------- adversarial training


def adversarial_backward(model, tokens, lengths, labels, loss_fn, epsilon):
    """Backward pass of the mean of the plain loss and the loss on pushed word vectors (Miyato et al., 2017).

    The push moves each review's word vectors by `epsilon` times the batch's word-vector spread, in the
    direction that raises the loss most. Returns the plain logits and loss.
    """
    words = model.embedding(tokens)  # [batch, seq_len, embedding_dim]
    keep = model.embedding_dropout(torch.ones_like(words))  # one dropout mask for both passes
    embedded = words * keep
    embedded.retain_grad()  # keep the loss's gradient for the batch's word vectors, not only the weights'
    logits = model.read(embedded, lengths)
    loss = loss_fn(logits, labels)
    (loss / 2).backward()  # half of each loss: the gradient keeps the plain step's size, and clipping its meaning
    # Each review's direction of steepest ascent, over all its words together, scaled to length 1.
    direction = embedded.grad / embedded.grad.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    scale = words.detach()[tokens != model.embedding.padding_idx].std()  # the batch's word vectors' spread
    pushed = model.embedding(tokens) * keep + epsilon * scale * direction
    (loss_fn(model.read(pushed, lengths), labels) / 2).backward()  # its gradients add to the plain loss's
    return logits, loss


# --------------------------------------------------------------------------- weight averaging


def averaging_window(best_epoch, last_epoch, size):
    """The `size` consecutive epochs around best_epoch, within 1..last_epoch, whose weights are averaged.

    Centred on the best epoch (one more epoch after it than before when `size` is even), moved inwards
    where it would run past the first or the last epoch, shortened to every epoch when there are fewer.
    """
    if not 1 <= best_epoch <= last_epoch:
        raise ValueError(f"best_epoch {best_epoch} is not an epoch of 1..{last_epoch}")
    if size < 1:
        raise ValueError(f"an averaging window needs at least one epoch, got size {size}")
    size = min(size, last_epoch)
    first = max(1, min(best_epoch - (size - 1) // 2, last_epoch - size + 1))
    return list(range(first, first + size))


def save_epoch_weights(folder, epoch, model):
    """Save the weights after `epoch` to folder/epoch_<epoch>, for averaging after training."""
    helpers.save_checkpoint(folder / f"epoch_{epoch}", model)


def averaged_weights(folder, epochs):
    """The mean, parameter by parameter, of the weights saved to folder after the given epochs."""
    total = None
    for epoch in epochs:
        state = helpers.read_weights(folder / f"epoch_{epoch}")
        total = state if total is None else {name: total[name] + state[name] for name in total}
    return {name: value / len(epochs) for name, value in total.items()}


WINDOWS = (1, 2, 3, 4, 5)  # the window sizes measured on the validation split


def average_weights(model, folder, best_epoch, last_epoch, size, evaluate, sizes=WINDOWS):
    """Load the average of `size` epochs around the best into model; also measure every window of `sizes`.

    evaluate(model) -> (validation loss, validation accuracy). Returns the table of windows (one dict
    each, as metrics.json's "averaging" holds it) and the epochs averaged into model.
    """
    table = []
    for window in sorted({min(s, last_epoch) for s in sizes}):
        epochs = averaging_window(best_epoch, last_epoch, window)
        helpers.load_weights(model, averaged_weights(folder, epochs))
        valid_loss, valid_acc = evaluate(model)
        table.append({"epochs": epochs, "valid_loss": valid_loss, "valid_acc": valid_acc})
    chosen = averaging_window(best_epoch, last_epoch, size)
    helpers.load_weights(model, averaged_weights(folder, chosen))
    return table, chosen


# --------------------------------------------------------------------------- an ensemble


class Ensemble(nn.Module):
    """Several trained models that vote: the ensemble's logit is the mean of its members' logits."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, tokens, lengths):
        return torch.stack([member(tokens, lengths) for member in self.members]).mean(dim=0)  # [batch]


def member_weights(state, index):
    """The weights of member `index` of an ensemble's state_dict (whose names start "members.<index>.")."""
    prefix = f"members.{index}."
    member = {name[len(prefix):]: value for name, value in state.items() if name.startswith(prefix)}
    if not member:
        members = sorted({int(name.split(".")[1]) for name in state if name.startswith("members.")})
        raise ValueError(f"the checkpoint has no member {index}; its members: {members or 'none (not an ensemble)'}")
    return member


def train_members(first_model, first_history, n_models, seed, new_model, batches_for_seed, fit_member):
    """The first model and n_models - 1 more, each from seed + k: its own start, dropout masks and batch order.

    new_model() -> an untrained model like the first; batches_for_seed(s) -> training batches shuffled by s;
    fit_member(model, batches, k) -> (history, EarlyStopping record, interrupted) with the best epoch's
    weights loaded into model. Returns the members and a record of each (seed, best epoch, history).
    """
    members = [first_model]
    records = [{"seed": seed, "history": first_history}]
    for k in range(1, n_models):
        helpers.set_seed(seed + k)
        member = new_model()
        history, stopper, interrupted = fit_member(member, batches_for_seed(seed + k), k)
        if stopper.best_epoch == 0:  # interrupted before its first epoch ended: nothing to keep
            break
        members.append(member)
        records.append({"seed": seed + k, "best_epoch": stopper.best_epoch, "history": history})
        if interrupted:
            break
    return members, records


def ensemble_integrated_gradients(model, token_ids, device, steps):
    """Integrated gradients of an ensemble: each member's, averaged, as its logit averages theirs."""
    explained = [helpers.integrated_gradients(member, token_ids, device, steps)
                 for member in getattr(model, "members", [model])]
    contributions, logit, reference_logit = (np.mean(values, axis=0) for values in zip(*explained, strict=True))
    return contributions, float(logit), float(reference_logit)
