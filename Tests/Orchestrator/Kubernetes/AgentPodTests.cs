using k8s.Models;
using Rbs.Orchestrator.Compute;
using Rbs.Orchestrator.Compute.Kubernetes;

namespace Rbs.Tests.Orchestrator.Kubernetes;

public sealed class AgentPodTests
{
    [Theory]
    [InlineData("alice")]
    [InlineData("alice@example.com")]
    [InlineData("Alice Smith / Platform")]
    [InlineData("-leading-and-trailing-")]
    [InlineData("")]
    [InlineData("ünïcödé")]
    [InlineData("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    public void LabelValuesAreValidKubernetesLabelValues(string input)
    {
        var value = AgentPod.LabelValue(input);

        Assert.True(value.Length <= 63, value);
        Assert.Matches("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", value);
    }

    [Fact]
    public void DistinctUsersKeepDistinctLabelsEvenWhenSanitizedAlike()
    {
        Assert.NotEqual(AgentPod.LabelValue("alice@example.com"), AgentPod.LabelValue("alice#example.com"));
        Assert.NotEqual(AgentPod.LabelValue(new string('a', 64)), AgentPod.LabelValue(new string('a', 65)));
        Assert.Equal("bob", AgentPod.LabelValue("bob"));
    }

    [Fact]
    public void PvcWorkspaceMountsAPerUserAndRepoSubPathAndLimitsAreOptional()
    {
        var pod = AgentPod.Build(
            new AgentSpec("a1", "alice@example.com", "r1", "/src"),
            new KubernetesComputeOptions { WorkspaceClaimName = "rbs-workspaces", CpuLimit = "", MemoryLimit = "" });

        var volume = Assert.Single(pod.Spec.Volumes, v => v.Name == "workspace");
        Assert.Equal("rbs-workspaces", volume.PersistentVolumeClaim.ClaimName);
        var mount = Assert.Single(pod.Spec.Containers[0].VolumeMounts, m => m.Name == "workspace");
        Assert.Equal(AgentPod.LabelValue("alice@example.com") + "/r1", mount.SubPath);
        Assert.Null(pod.Spec.Containers[0].Resources.Limits);
    }

    [Fact]
    public void WorkspaceFromImageMountsNothingOverTheImagesWorkspace()
    {
        var pod = AgentPod.Build(new AgentSpec("a1", "u", "r", "/src"), new KubernetesComputeOptions { WorkspaceFromImage = true });

        Assert.DoesNotContain(pod.Spec.Containers[0].VolumeMounts, m => m.MountPath == "/workspace");
        Assert.Contains("/workspace", pod.Spec.Containers[0].Args);
        Assert.Contains(pod.Spec.Containers[0].VolumeMounts, m => m.MountPath == "/home/rbs/.cache");
    }

    [Fact]
    public void OverlongAgentIdsStillGiveValidPodNames()
    {
        var name = AgentPod.PodName(new string('A', 80));
        Assert.True(name.Length <= 63);
        Assert.Matches("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name);
        Assert.Equal("rbs-agent-a0123", AgentPod.PodName("a0123"));
    }

    [Fact]
    public void IdentityPrefersFullAnnotationValuesOverSanitizedLabels()
    {
        var options = new KubernetesComputeOptions();
        var pod = AgentPod.Build(new AgentSpec("a1", "alice@example.com", new string('b', 70), "/src/x"), options);

        Assert.Equal(("a1", "alice@example.com", new string('b', 70), "/src/x"), AgentPod.Identity(pod, options));
        Assert.Null(AgentPod.Identity(new V1Pod { Metadata = new V1ObjectMeta { Name = "x" } }, options));
    }
}
