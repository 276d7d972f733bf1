using System.Globalization;
using k8s.Models;

namespace Rbs.Orchestrator.Compute.Kubernetes;

internal enum PodReadinessKind
{
    /// <summary>Still on its way (scheduling, pulling, starting, not yet ready).</summary>
    Pending,

    /// <summary>Running, Ready, with a pod IP.</summary>
    Ready,

    /// <summary>The scheduler cannot place it (yet): no node fits.</summary>
    Unschedulable,

    /// <summary>It will not become ready by waiting.</summary>
    Failed,
}

/// <summary>What one observation of an agent pod says about its start.</summary>
/// <param name="Detail">Ready: the pod IP. Otherwise a user-facing explanation.</param>
/// <param name="Transient">For Failed: whether a new attempt may succeed.</param>
internal readonly record struct PodReadiness(PodReadinessKind Kind, string Detail, bool Transient = false)
{
    /// <summary>
    /// Classifies a pod. Permanent: image pull failures, container config errors, crashes (retrying the same image
    /// gives the same result). Transient: eviction, deletion by someone else, and Unschedulable (capacity comes and
    /// goes; a node autoscaler may be adding a node).
    /// </summary>
    public static PodReadiness Of(V1Pod pod, string image)
    {
        var name = pod.Metadata?.Name ?? "?";
        var status = pod.Status;
        if (pod.Metadata?.DeletionTimestamp is not null)
        {
            return Failed($"agent pod {name} is being deleted", transient: true);
        }

        if (status?.Phase is "Failed" or "Succeeded")
        {
            var evicted = string.Equals(status.Reason, "Evicted", StringComparison.Ordinal);
            return Failed(
                $"agent pod {name} ended (phase {status.Phase}{Suffix(status.Reason, status.Message)}){TerminatedDetail(status)}",
                transient: evicted);
        }

        foreach (var container in status?.ContainerStatuses ?? [])
        {
            var waiting = container.State?.Waiting;
            switch (waiting?.Reason)
            {
                case "ErrImagePull" or "ImagePullBackOff" or "InvalidImageName" or "ErrImageNeverPull":
                    return Failed(
                        $"agent pod {name} cannot pull image '{container.Image ?? image}' ({waiting.Reason}{Suffix(null, waiting.Message)}); " +
                        "check Orchestrator:Kubernetes:AgentImage, the registry and ImagePullSecrets",
                        transient: false);
                case "CreateContainerConfigError" or "CreateContainerError" or "RunContainerError":
                    return Failed(
                        $"agent pod {name} cannot start its container ({waiting.Reason}{Suffix(null, waiting.Message)})",
                        transient: false);
                case "CrashLoopBackOff":
                    return Failed(
                        $"agent pod {name} keeps crashing (CrashLoopBackOff){Terminated(container.LastState?.Terminated)}; " +
                        "see `kubectl logs --previous " + name + "`",
                        transient: false);
            }

            if (container.State?.Terminated is { } terminated)
            {
                return Failed(
                    $"agent pod {name}: container exited before becoming ready{Terminated(terminated)}; see `kubectl logs {name}`",
                    transient: false);
            }
        }

        var scheduled = status?.Conditions?.FirstOrDefault(c => c.Type == "PodScheduled");
        if (scheduled is { Status: "False", Reason: "Unschedulable" })
        {
            return new PodReadiness(
                PodReadinessKind.Unschedulable,
                $"agent pod {name} cannot be scheduled: {scheduled.Message ?? "no node fits"}",
                Transient: true);
        }

        var ready = status?.Conditions?.FirstOrDefault(c => c.Type == "Ready");
        if (status?.Phase == "Running" && ready?.Status == "True" && !string.IsNullOrEmpty(status.PodIP))
        {
            return new PodReadiness(PodReadinessKind.Ready, status.PodIP);
        }

        return new PodReadiness(PodReadinessKind.Pending, Describe(pod));
    }

    /// <summary>One line on where a pending pod is stuck, for timeout messages.</summary>
    public static string Describe(V1Pod pod)
    {
        var status = pod.Status;
        var waiting = status?.ContainerStatuses?.Select(c => c.State?.Waiting?.Reason).FirstOrDefault(r => r is not null);
        var notReady = status?.Conditions?.FirstOrDefault(c => c is { Type: "Ready", Status: not "True" });
        return $"phase {status?.Phase ?? "Pending"}" +
            (waiting is not null ? $", container {waiting}" : "") +
            (notReady is not null ? $", not ready{Suffix(notReady.Reason, notReady.Message)}" : "");
    }

    private static PodReadiness Failed(string message, bool transient) =>
        new(PodReadinessKind.Failed, message, transient);

    private static string TerminatedDetail(V1PodStatus status) =>
        status.ContainerStatuses?.Select(c => c.State?.Terminated).FirstOrDefault(t => t is not null) is { } t
            ? Terminated(t)
            : "";

    private static string Terminated(V1ContainerStateTerminated? terminated) =>
        terminated is null
            ? ""
            : $": exit code {terminated.ExitCode.ToString(CultureInfo.InvariantCulture)}{Suffix(terminated.Reason, terminated.Message)}";

    private static string Suffix(string? reason, string? message) =>
        (string.IsNullOrEmpty(reason) ? "" : " " + reason) + (string.IsNullOrEmpty(message) ? "" : ": " + message);
}
