using System.Text.RegularExpressions;
using k8s.Models;
using Microsoft.Extensions.Options;

namespace Rbs.Orchestrator.Compute.Kubernetes;

/// <summary>Rejects settings the API server would reject later, at start-up, naming the key to fix.</summary>
internal sealed partial class KubernetesComputeOptionsValidator : IValidateOptions<KubernetesComputeOptions>
{
    public ValidateOptionsResult Validate(string? name, KubernetesComputeOptions options)
    {
        var errors = new List<string>();
        const string S = KubernetesComputeOptions.SectionName;

        if (options.Namespace.Length > 0 && !DnsLabel().IsMatch(options.Namespace))
        {
            errors.Add($"{S}:Namespace '{options.Namespace}' is not a valid namespace name (lower-case DNS label).");
        }

        if (string.IsNullOrWhiteSpace(options.AgentImage))
        {
            errors.Add($"{S}:AgentImage is required (the image with rbs-agent and bazel).");
        }

        if (string.IsNullOrWhiteSpace(options.AgentCommand))
        {
            errors.Add($"{S}:AgentCommand is required.");
        }

        if (options.ImagePullPolicy is not ("Always" or "IfNotPresent" or "Never"))
        {
            errors.Add($"{S}:ImagePullPolicy must be Always, IfNotPresent or Never (got '{options.ImagePullPolicy}').");
        }

        if (options.AgentPort is < 1 or > 65535)
        {
            errors.Add($"{S}:AgentPort must be 1-65535 (got {options.AgentPort}).");
        }

        if (options.PodReadyTimeout <= TimeSpan.Zero)
        {
            errors.Add($"{S}:PodReadyTimeout must be positive (got {options.PodReadyTimeout}).");
        }

        if (options.UnschedulableGracePeriod < TimeSpan.Zero)
        {
            errors.Add($"{S}:UnschedulableGracePeriod must not be negative.");
        }

        if (options.DeleteGracePeriod < TimeSpan.Zero)
        {
            errors.Add($"{S}:DeleteGracePeriod must not be negative.");
        }

        if (options.RunAsUser <= 0)
        {
            errors.Add($"{S}:RunAsUser must be a non-root user id (got {options.RunAsUser}).");
        }

        foreach (var (key, value) in new[]
        {
            ("CpuRequest", options.CpuRequest), ("MemoryRequest", options.MemoryRequest),
            ("CpuLimit", options.CpuLimit), ("MemoryLimit", options.MemoryLimit),
            ("WorkspaceSizeLimit", options.WorkspaceSizeLimit),
        })
        {
            if (value.Length > 0 && !IsQuantity(value))
            {
                errors.Add($"{S}:{key} '{value}' is not a Kubernetes quantity (e.g. 500m, 2, 4Gi).");
            }
        }

        if (!options.WorkspacePath.StartsWith('/') || !options.CachePath.StartsWith('/'))
        {
            errors.Add($"{S}:WorkspacePath and {S}:CachePath must be absolute paths inside the pod.");
        }

        if (string.IsNullOrWhiteSpace(options.LabelPrefix) || !DnsSubdomain().IsMatch(options.LabelPrefix))
        {
            errors.Add($"{S}:LabelPrefix '{options.LabelPrefix}' must be a DNS subdomain (e.g. rbs.dev).");
        }

        if (string.IsNullOrWhiteSpace(options.JoinTokenEnvironmentVariable))
        {
            errors.Add($"{S}:JoinTokenEnvironmentVariable is required.");
        }

        return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
    }

    private static bool IsQuantity(string value)
    {
        try
        {
            _ = new ResourceQuantity(value).ToDecimal();
            return true;
        }
        catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
        {
            return false;
        }
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    private static partial Regex DnsLabel();

    [GeneratedRegex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")]
    private static partial Regex DnsSubdomain();
}
