using Microsoft.Extensions.Options;

namespace Rbs.Orchestrator.Compute.Processes;

/// <summary>Local subprocess agents (<c>--local-mode</c>): section <c>Orchestrator:Process</c>.</summary>
internal sealed class ProcessComputeOptions
{
    public const string SectionName = "Orchestrator:Process";

    /// <summary>
    /// The agent executable (<c>--agent-path</c>). A path ending in ".dll" runs through the current dotnet
    /// host. Default: empty, meaning <c>rbs-agent</c> next to the orchestrator executable
    /// (AppContext.BaseDirectory), else <c>rbs-agent</c> on PATH.
    /// </summary>
    public string? AgentPath { get; set; }

    /// <summary>
    /// Build tool passed to agents as <c>--build-tool</c>. Default: empty, the agent's own default
    /// (<c>bazel</c> on PATH).
    /// </summary>
    public string? BuildTool { get; set; }

    /// <summary>
    /// How long StopAsync waits after SIGTERM before SIGKILL. Default: 00:00:30, the agent's own worst case with its
    /// defaults: a running command's interrupt (10 s to SIGTERM, 5 s more to SIGKILL), then up to 10 s of
    /// <c>bazel shutdown</c> (Agent:BuildToolShutdownTimeout). An agent killed earlier still leaves no command behind
    /// (they die with it), and a shutdown it started finishes on its own.
    /// </summary>
    public TimeSpan StopTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Value of <see cref="UserIsolation"/>: isolate when the orchestrator serves several users and can.</summary>
    public const string IsolationAuto = "auto";

    /// <summary>Value of <see cref="UserIsolation"/>: always run each user's agents under the user's own uid.</summary>
    public const string IsolationUid = "uid";

    /// <summary>Value of <see cref="UserIsolation"/>: never switch uids, and so serve one user only.</summary>
    public const string IsolationNone = "none";

    /// <summary>
    /// How users' agents are kept apart on this machine (<c>--user-isolation</c>): <c>auto</c>, <c>uid</c> or
    /// <c>none</c>. With isolation each user's agents — and so their bazel servers and every build action — run under
    /// a uid and gid of that user's own (from <see cref="FirstUid"/> on), with a private HOME, workspaces and agent
    /// files no other user can read; this needs root (CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_FOWNER). Without it every
    /// agent runs as the orchestrator's own uid, so the orchestrator serves only the first user it served and refuses
    /// any other with FailedPrecondition. <c>auto</c> isolates when API keys name more than one user and the
    /// orchestrator has those capabilities; <c>uid</c> always isolates (start-up fails without the capabilities).
    /// Default: <c>auto</c>.
    /// </summary>
    public string UserIsolation { get; set; } = IsolationAuto;

    /// <summary>
    /// The first uid (and gid) given to an isolated user (<c>--first-uid</c>); users get the lowest free one from here
    /// on, recorded in <c>.users.json</c> in the workspaces directory so a restart keeps every user's uid (and their files
    /// their owner). The range must be unused on this machine: uids in /etc/passwd or /etc/group, or that a process runs
    /// as, are skipped; orchestrators on one machine share one --workspaces-path or use disjoint ranges. Default:
    /// 1900000000, above the ranges systemd and useradd hand out (containers' ranges end at 1879048191).
    /// </summary>
    public int FirstUid { get; set; } = 1_900_000_000;

    /// <summary>How many uids from <see cref="FirstUid"/> on may be given out (<c>--uid-count</c>). Default: 65536.</summary>
    public int UidCount { get; set; } = 65_536;

    /// <summary>The isolation mode, normalized (lowercase, trimmed; empty means <c>auto</c>).</summary>
    public string GetUserIsolation() =>
        string.IsNullOrWhiteSpace(UserIsolation) ? IsolationAuto : UserIsolation.Trim().ToLowerInvariant();
}

/// <summary>Start-up validation of <see cref="ProcessComputeOptions"/>, naming the flag to fix.</summary>
internal sealed class ProcessComputeOptionsValidator : IValidateOptions<ProcessComputeOptions>
{
    public ValidateOptionsResult Validate(string? name, ProcessComputeOptions options)
    {
        var failures = new List<string>();
        if (options.GetUserIsolation() is not (ProcessComputeOptions.IsolationAuto or ProcessComputeOptions.IsolationUid or ProcessComputeOptions.IsolationNone))
        {
            failures.Add($"--user-isolation '{options.UserIsolation}' is unknown; use 'auto', 'uid' or 'none'");
        }

        if (options.FirstUid < 1000)
        {
            failures.Add($"--first-uid {options.FirstUid} must be at least 1000 (system accounts live below)");
        }

        if (options.UidCount < 1 || (long)options.FirstUid + options.UidCount - 1 > int.MaxValue - 1)
        {
            failures.Add($"--uid-count {options.UidCount} must be positive and keep the last uid below {int.MaxValue}");
        }

        if (options.StopTimeout < TimeSpan.Zero)
        {
            failures.Add($"Orchestrator:Process:StopTimeout {options.StopTimeout} must not be negative");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
