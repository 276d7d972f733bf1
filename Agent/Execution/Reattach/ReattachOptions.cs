using Microsoft.Extensions.Options;

namespace Rbs.Agent.Execution.Reattach;

/// <summary>
/// How long and how much a reattachable command (StartCommand.reattachable) is kept while its client is gone
/// (section <c>Agent:Execution</c>; flags <c>--reattach-grace</c>, <c>--reattach-memory-bytes</c>,
/// <c>--reattach-spill-bytes</c>, <c>--reattach-spill-dir</c>; docs/reattach.md).
/// </summary>
internal sealed class ReattachOptions
{
    public const string SectionName = "Agent:Execution";

    /// <summary>The flags that set these options.</summary>
    public static readonly IReadOnlyDictionary<string, string> SwitchMappings = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["--reattach-grace"] = $"{SectionName}:{nameof(ReattachGrace)}",
        ["--reattach-memory-bytes"] = $"{SectionName}:{nameof(ReattachMemoryBytes)}",
        ["--reattach-spill-bytes"] = $"{SectionName}:{nameof(ReattachSpillBytes)}",
        ["--reattach-spill-dir"] = $"{SectionName}:{nameof(ReattachSpillDirectory)}",
    };

    /// <summary>
    /// How long a command whose client is gone keeps running, waiting for the client to attach again; then it is
    /// interrupted (SIGINT and the usual escalation) and forgotten. Zero: interrupted as soon as its client is gone.
    /// Default <c>00:01:00</c>.
    /// </summary>
    public TimeSpan ReattachGrace { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Output of one command (stdout and stderr together) the agent keeps in memory until the client has it; beyond
    /// this it goes to a spill file. Default 8 MiB (<c>8388608</c>); at least 65536.
    /// </summary>
    public long ReattachMemoryBytes { get; set; } = 8L * 1024 * 1024;

    /// <summary>
    /// The most output of one command held in its spill file. A command whose client stays away while it writes more
    /// is stopped (as by Ctrl-C), and a later attach is told its output was lost. Default 256 MiB (<c>268435456</c>).
    /// </summary>
    public long ReattachSpillBytes { get; set; } = 256L * 1024 * 1024;

    /// <summary>Where spill files go (one per command, deleted when it is forgotten). Default <c>&lt;temp&gt;/rbs-agent-output-&lt;pid&gt;</c>.</summary>
    public string? ReattachSpillDirectory { get; set; }

    public string ResolveSpillDirectory() =>
        string.IsNullOrWhiteSpace(ReattachSpillDirectory)
            ? Path.Combine(Path.GetTempPath(), $"rbs-agent-output-{Environment.ProcessId}")
            : ReattachSpillDirectory;
}

/// <summary>Start-up checks for <see cref="ReattachOptions"/>, each naming the flag to fix.</summary>
internal sealed class ReattachOptionsValidator : IValidateOptions<ReattachOptions>
{
    public ValidateOptionsResult Validate(string? name, ReattachOptions options)
    {
        var failures = new List<string>();
        if (options.ReattachGrace < TimeSpan.Zero || options.ReattachGrace > TimeSpan.FromDays(1))
        {
            failures.Add($"Agent:Execution:ReattachGrace must be between 00:00:00 and 1.00:00:00, not {options.ReattachGrace} (--reattach-grace).");
        }

        if (options.ReattachMemoryBytes < 64 * 1024)
        {
            failures.Add("Agent:Execution:ReattachMemoryBytes must be at least 65536 (--reattach-memory-bytes).");
        }

        if (options.ReattachSpillBytes < 0)
        {
            failures.Add("Agent:Execution:ReattachSpillBytes must not be negative (--reattach-spill-bytes).");
        }

        if (!string.IsNullOrWhiteSpace(options.ReattachSpillDirectory) && !Path.IsPathRooted(options.ReattachSpillDirectory))
        {
            failures.Add($"Agent:Execution:ReattachSpillDirectory '{options.ReattachSpillDirectory}' must be an absolute path (--reattach-spill-dir).");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
