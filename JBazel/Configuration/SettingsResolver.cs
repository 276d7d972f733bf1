using System.CommandLine;
using Rbs.JBazel.Commands;

namespace Rbs.JBazel.Configuration;

/// <summary>One place a setting can come from, as <c>--rbs_*</c> tokens.</summary>
/// <param name="Description">Where the tokens came from, for error messages (e.g. <c>/ws/.jbazelrc:3</c>).</param>
internal sealed record SettingsSource(string Description, IReadOnlyList<string> Tokens);

/// <summary>A bad <c>--rbs_*</c> value or rc file line; reported as one line, exit code 2.</summary>
internal sealed class SettingsException(string message) : Exception(message);

/// <summary>
/// Merges jbazel's settings. Precedence, first match wins: command line &gt; environment (RBS_*) &gt;
/// <c>&lt;workspace&gt;/.jbazelrc</c> &gt; <c>~/.jbazelrc</c> &gt; built-in default. Every source is parsed
/// by the same System.CommandLine options, so a value means the same wherever it is written.
/// </summary>
internal sealed class SettingsResolver(Func<IReadOnlyList<string>, ParseResult> parse)
{
    public const string RcFileName = ".jbazelrc";

    /// <summary>The environment variable for an option: <c>--rbs_connect</c> → <c>RBS_CONNECT</c>.</summary>
    public static string EnvironmentVariableFor(Option option) => option.Name[2..].ToUpperInvariant();

    public RbsSettings Resolve(ParseResult commandLine, CliEnvironment environment, string? workspaceRoot)
    {
        var layers = new List<ParseResult> { commandLine };
        var descriptions = new List<string> { "the command line" };
        foreach (var source in Sources(environment, workspaceRoot))
        {
            var result = parse(source.Tokens);
            if (result.Errors.Count > 0)
            {
                throw new SettingsException($"{source.Description}: {BazelCommand.DescribeErrors(result)}");
            }

            layers.Add(result);
            descriptions.Add(source.Description);
        }

        var defaults = RbsSettings.Defaults;
        return new RbsSettings(
            Pick(layers, BazelCommand.OrchestratorOption, defaults.Orchestrator),
            Pick(layers, BazelCommand.ConnectOption, defaults.Connect),
            Pick(layers, BazelCommand.StatusOption, defaults.Status),
            NullIfEmpty(Pick(layers, BazelCommand.ApiKeyOption, defaults.ApiKey ?? "")),
            Pick(layers, BazelCommand.TimeoutOption, defaults.Timeout))
        {
            FetchOutputs = Pick(layers, BazelCommand.FetchOutputsOption, defaults.FetchOutputs ? "true" : "false") == "true",
            Sync = Pick(layers, BazelCommand.SyncOption, defaults.Sync ? "true" : "false") == "true",
            SyncExcludes = PickAll(layers, BazelCommand.SyncExcludeOption),
            SyncGitignore = Pick(layers, BazelCommand.SyncGitignoreOption, defaults.SyncGitignore ? "true" : "false") == "true",
            FetchTestLogs = Pick(layers, BazelCommand.FetchTestLogsOption, defaults.FetchTestLogs ? "true" : "false") == "true",
            Relay = Pick(layers, BazelCommand.RelayOption, defaults.Relay ? "true" : "false") == "true",
            OrchestratorSource = SourceOf(layers, descriptions, BazelCommand.OrchestratorOption),
        };
    }

    /// <summary>A repeatable option's values from every source, the most important (command line) last so it can re-include.</summary>
    private static IReadOnlyList<string> PickAll(List<ParseResult> layers, Option<string[]> option)
    {
        var values = new List<string>();
        for (var i = layers.Count - 1; i >= 0; i--)
        {
            if (layers[i].GetResult(option) is { Implicit: false } && layers[i].GetValue(option) is { } layerValues)
            {
                values.AddRange(layerValues);
            }
        }

        // The shared empty array when unset, so settings from equal inputs compare equal.
        return values.Count == 0 ? Array.Empty<string>() : values;
    }

    /// <summary>Sources after the command line, in precedence order.</summary>
    internal static IEnumerable<SettingsSource> Sources(CliEnvironment environment, string? workspaceRoot)
    {
        foreach (var option in BazelCommand.SettingOptions)
        {
            var name = EnvironmentVariableFor(option);
            // An empty variable counts as unset, as `RBS_API_KEY= jbazel ...` is how people clear one.
            if (environment.Get(name) is { Length: > 0 } value)
            {
                yield return new SettingsSource($"environment variable {name}", [$"{option.Name}={value}"]);
            }
        }

        if (workspaceRoot is not null)
        {
            foreach (var source in ReadRcFile(Path.Combine(workspaceRoot, RcFileName)))
            {
                yield return source;
            }
        }

        if (environment.HomeDirectory is { Length: > 0 } home)
        {
            var userRc = Path.Combine(home, RcFileName);
            if (workspaceRoot is null || !SamePath(userRc, Path.Combine(workspaceRoot, RcFileName)))
            {
                foreach (var source in ReadRcFile(userRc))
                {
                    yield return source;
                }
            }
        }
    }

    /// <summary>
    /// An rc file holds <c>--rbs_x=value</c> (or <c>--rbs_x value</c>) tokens separated by whitespace, any
    /// number per line; lines starting with <c>#</c> are comments. A later line overrides an earlier one
    /// (as in .bazelrc), so lines are returned last first.
    /// </summary>
    internal static IReadOnlyList<SettingsSource> ReadRcFile(string path)
    {
        string[] lines;
        try
        {
            if (!File.Exists(path))
            {
                return [];
            }

            lines = File.ReadAllLines(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new SettingsException($"cannot read {path}: {ex.Message}");
        }

        var sources = new List<SettingsSource>();
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i].Trim();
            if (line.Length == 0 || line.StartsWith('#'))
            {
                continue;
            }

            var tokens = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            var split = ArgumentSplitter.Split(tokens, BazelCommand.OptionsTakingValues);
            if (split.BazelArgs.Count > 0)
            {
                throw new SettingsException(
                    $"{path}:{i + 1}: '{split.BazelArgs[0]}' is not a jbazel option; {RcFileName} holds only --rbs_* options (bazel's go in .bazelrc)");
            }

            sources.Add(new SettingsSource($"{path}:{i + 1}", split.RbsTokens));
        }

        sources.Reverse();
        return sources;
    }

    private static T Pick<T>(List<ParseResult> layers, Option<T> option, T fallback)
    {
        foreach (var layer in layers)
        {
            if (layer.GetResult(option) is { Implicit: false } && layer.GetValue(option) is { } value)
            {
                return value;
            }
        }

        return fallback;
    }

    /// <summary>Which source set <paramref name="option"/>, in words for an error message.</summary>
    private static string SourceOf(List<ParseResult> layers, List<string> descriptions, Option option)
    {
        for (var i = 0; i < layers.Count; i++)
        {
            if (layers[i].GetResult(option) is { Implicit: false })
            {
                return i == 0 ? $"{option.Name} on the command line" : descriptions[i];
            }
        }

        return RbsSettings.DefaultSource;
    }

    private static string? NullIfEmpty(string? value) => string.IsNullOrEmpty(value) ? null : value;

    private static bool SamePath(string a, string b) =>
        string.Equals(Path.GetFullPath(a), Path.GetFullPath(b), StringComparison.Ordinal);
}
