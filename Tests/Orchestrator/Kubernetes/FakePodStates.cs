using k8s.Models;

namespace Rbs.Tests.Orchestrator.Kubernetes;

/// <summary>What the scheduler and kubelet would write into a pod's status, for the fake API server.</summary>
internal static class FakePodStates
{
    public static void Scheduled(V1Pod pod)
    {
        pod.Spec.NodeName = "node-1";
        pod.Status.Phase = "Pending";
        pod.Status.Conditions = [Condition("PodScheduled", "True"), Condition("Ready", "False", "ContainersNotReady")];
        pod.Status.ContainerStatuses = [Container(pod, new V1ContainerState { Waiting = new V1ContainerStateWaiting { Reason = "ContainerCreating" } }, ready: false)];
    }

    public static void RunningNotReady(V1Pod pod, string podIp)
    {
        Scheduled(pod);
        pod.Status.Phase = "Running";
        pod.Status.PodIP = podIp;
        pod.Status.ContainerStatuses = [Container(pod, new V1ContainerState { Running = new V1ContainerStateRunning { StartedAt = DateTime.UtcNow } }, ready: false)];
    }

    public static void RunningReady(V1Pod pod, string podIp)
    {
        RunningNotReady(pod, podIp);
        pod.Status.Conditions = [Condition("PodScheduled", "True"), Condition("Initialized", "True"), Condition("ContainersReady", "True"), Condition("Ready", "True")];
        pod.Status.ContainerStatuses = [Container(pod, new V1ContainerState { Running = new V1ContainerStateRunning { StartedAt = DateTime.UtcNow } }, ready: true)];
    }

    public static void Unschedulable(V1Pod pod, string message)
    {
        pod.Status.Phase = "Pending";
        pod.Status.Conditions = [new V1PodCondition { Type = "PodScheduled", Status = "False", Reason = "Unschedulable", Message = message }];
    }

    public static void ImagePullBackOff(V1Pod pod)
    {
        Scheduled(pod);
        pod.Status.ContainerStatuses = [Container(pod, new V1ContainerState
        {
            Waiting = new V1ContainerStateWaiting
            {
                Reason = "ImagePullBackOff",
                Message = $"Back-off pulling image \"{pod.Spec.Containers[0].Image}\"",
            },
        }, ready: false)];
    }

    public static void CrashLoopBackOff(V1Pod pod, int exitCode)
    {
        Scheduled(pod);
        var status = Container(pod, new V1ContainerState
        {
            Waiting = new V1ContainerStateWaiting { Reason = "CrashLoopBackOff", Message = "back-off 10s restarting failed container" },
        }, ready: false);
        status.RestartCount = 2;
        status.LastState = new V1ContainerState
        {
            Terminated = new V1ContainerStateTerminated { ExitCode = exitCode, Reason = "Error", FinishedAt = DateTime.UtcNow },
        };
        pod.Status.ContainerStatuses = [status];
    }

    public static void Failed(V1Pod pod, string reason, string message)
    {
        pod.Status.Phase = "Failed";
        pod.Status.Reason = reason;
        pod.Status.Message = message;
    }

    private static V1PodCondition Condition(string type, string status, string? reason = null) =>
        new() { Type = type, Status = status, Reason = reason, LastTransitionTime = DateTime.UtcNow };

    private static V1ContainerStatus Container(V1Pod pod, V1ContainerState state, bool ready) => new()
    {
        Name = pod.Spec.Containers[0].Name,
        Image = pod.Spec.Containers[0].Image,
        ImageID = "",
        Ready = ready,
        Started = state.Running is not null,
        State = state,
    };
}
