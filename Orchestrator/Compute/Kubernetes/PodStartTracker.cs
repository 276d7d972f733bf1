using k8s.Models;

namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>
/// How one agent pod's start stands after an observation: <see cref="Readiness"/> says ready (the IP), failed (the
/// reason) or still waiting, and <see cref="WaitUntil"/> when the wait must end if nothing else is observed.
/// </summary>
/// <param name="Readiness">The pod's readiness; Failed also when it stayed unschedulable past the grace period.</param>
/// <param name="WaitUntil">While waiting: when to give up if no further observation arrives.</param>
/// <param name="GiveUpAt">While unschedulable: when the grace period ends (may be after <paramref name="WaitUntil"/>, which the ready timeout caps).</param>
internal readonly record struct PodStartStep(PodReadiness Readiness, DateTimeOffset WaitUntil, DateTimeOffset? GiveUpAt = null);

/// <summary>
/// Decides, one observation of an agent pod at a time, how its start stands: the one source of truth for when the wait
/// ends. The pod has <see cref="KubernetesComputeOptions.PodReadyTimeout"/> from the start to become Running and
/// Ready; while it is Unschedulable it has <see cref="KubernetesComputeOptions.UnschedulableGracePeriod"/> from the first
/// such observation (capped by the ready timeout), and once it is scheduled after all the full ready timeout again.
/// No I/O and no clock of its own: the caller says when each observation was made.
/// </summary>
internal sealed class PodStartTracker(V1Pod created, KubernetesComputeOptions options, DateTimeOffset started)
{
    private readonly string _podName = created.Metadata.Name;
    private readonly DateTimeOffset _readyDeadline = started + options.PodReadyTimeout;
    private DateTimeOffset? _unschedulableSince;
    private string _lastUnschedulable = "";

    /// <summary>The pod as last observed.</summary>
    public V1Pod Current { get; private set; } = created;

    /// <summary>Takes in the pod as observed at <paramref name="now"/>.</summary>
    public PodStartStep Observe(V1Pod pod, DateTimeOffset now)
    {
        Current = pod;
        var readiness = PodReadiness.Of(pod, options.AgentImage);
        switch (readiness.Kind)
        {
            case PodReadinessKind.Unschedulable:
                _lastUnschedulable = readiness.Detail;
                _unschedulableSince ??= now;
                var giveUpAt = _unschedulableSince.Value + options.UnschedulableGracePeriod;
                return giveUpAt <= now
                    ? new PodStartStep(readiness with { Kind = PodReadinessKind.Failed, Transient = true }, _readyDeadline)
                    : new PodStartStep(readiness, giveUpAt < _readyDeadline ? giveUpAt : _readyDeadline, giveUpAt);
            case PodReadinessKind.Pending:
                // Scheduled after all (a node came up): back to the full ready timeout.
                _unschedulableSince = null;
                _lastUnschedulable = "";
                return new PodStartStep(readiness, _readyDeadline);
            default:
                return new PodStartStep(readiness, _readyDeadline);
        }
    }

    /// <summary>Why the start failed when the wait reached its end without the pod becoming ready (transient: capacity or a slow pull).</summary>
    public ComputeException TimedOut() =>
        _lastUnschedulable.Length > 0
            ? new ComputeException(_lastUnschedulable, transient: true)
            : new ComputeException(
                $"agent pod {_podName} not ready after {options.PodReadyTimeout} ({PodReadiness.Describe(Current)}); " +
                "raise Orchestrator:Kubernetes:PodReadyTimeout if image pulls are slow",
                transient: true);
}
