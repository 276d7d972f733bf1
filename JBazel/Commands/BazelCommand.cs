using System.CommandLine;
using System.CommandLine.Parsing;
using System.Reflection;
using System.Text;
using Google.Protobuf;
using Rbs.JBazel.Configuration;
using Rbs.JBazel.Diagnostics;
using Rbs.JBazel.Outputs;
using Rbs.JBazel.Remote;
using Rbs.JBazel.Sync;
using Rbs.JBazel.Terminal;
using Rbs.JBazel.Workspace;
using Rbs.Shared.Text;
using Rbs.V1;

namespace Rbs.JBazel.Commands;

/// <summary>
/// jbazel's only command: run a bazel command line on the warm remote agent for this workspace.
/// System.CommandLine parses jbazel's own <c>--rbs_*</c> options (split out by <see cref="ArgumentSplitter"/>);
/// every other argument goes to bazel untouched.
/// </summary>
internal sealed class BazelCommand : RootCommand
{
    internal static readonly Option<Uri> OrchestratorOption = new("--rbs_orchestrator")
    {
        Description = "Orchestrator (or gateway) address.",
        HelpName = "URL",
        CustomParser = result => Parse<Uri>(result, OptionValues.TryParseOrchestrator),
    };

    internal static readonly Option<ConnectPreference> ConnectOption = new("--rbs_connect")
    {
        Description = "How to reach the agent: direct (its own address), tunnel (through the gateway), auto (the orchestrator decides).",
        HelpName = "direct|tunnel|auto",
        CustomParser = result => Parse<ConnectPreference>(result, OptionValues.TryParseConnect),
    };

    internal static readonly Option<StatusMode> StatusOption = new("--rbs_status")
    {
        Description = "Print 'rbs: agent <id> (<backend> <ref>) <warm|cold> in <N> ms' on stderr: auto (only when stderr is a terminal), always, never.",
        HelpName = "auto|always|never",
        CustomParser = result => Parse<StatusMode>(result, OptionValues.TryParseStatus),
    };

    internal static readonly Option<string> ApiKeyOption = new("--rbs_api_key")
    {
        Description = "API key sent to the orchestrator as 'authorization: Bearer <key>'.",
        HelpName = "KEY",
    };

    internal static readonly Option<TimeSpan> TimeoutOption = new("--rbs_timeout")
    {
        Description = "How long to wait for the orchestrator to find or start the agent (e.g. 120s, 2m).",
        HelpName = "DURATION",
        CustomParser = result => Parse<TimeSpan>(result, OptionValues.TryParseTimeout),
    };

    // Switches like --rbs_fetch_outputs: "true"/"false" after parsing, and 1/0, yes/no accepted too.
    internal static readonly Option<string> SyncOption = new("--rbs_sync")
    {
        Description = "Sync the working tree to an agent with its own copy of the workspace even where it could share this filesystem (process mode). Agents that cannot share it (pods, tunnel mode) are synced always.",
        HelpName = "true|false",
        Arity = ArgumentArity.ZeroOrOne,
        CustomParser = result => Parse<bool>(result, OptionValues.TryParseSwitch) ? "true" : "false",
    };

    internal static readonly Option<string[]> SyncExcludeOption = new("--rbs_sync_exclude")
    {
        Description = "Leave paths out of the workspace sync; gitignore syntax relative to the workspace root (e.g. /data/, *.log). Repeatable; adds to those from other sources.",
        HelpName = "PATTERN",
        AllowMultipleArgumentsPerToken = false,
    };

    internal static readonly Option<string> SyncGitignoreOption = new("--rbs_sync_gitignore")
    {
        Description = "Leave what git ignores (.gitignore files, info/exclude) out of the workspace sync. Off by default: bazel's glob() reads git-ignored files; rc files, .bazelversion, tools/bazel and local repositories are sent either way.",
        HelpName = "true|false",
        Arity = ArgumentArity.ZeroOrOne,
        CustomParser = result => Parse<bool>(result, OptionValues.TryParseSwitch) ? "true" : "false",
    };

    // A switch whose value is "true" or "false" after parsing. Not Option<bool>: System.CommandLine lets a bool option
    // consume only the literal tokens true/false, and RBS_FETCH_OUTPUTS=1 (or yes) must work too.
    internal static readonly Option<string> FetchOutputsOption = new("--rbs_fetch_outputs")
    {
        Description = "After a successful 'build', fetch its top-level outputs into <workspace>/jbazel-out/ (only the changed blocks). Written --rbs_fetch_outputs or --rbs_fetch_outputs=true|false.",
        HelpName = "true|false",
        Arity = ArgumentArity.ZeroOrOne,
        CustomParser = result => Parse<bool>(result, OptionValues.TryParseSwitch) ? "true" : "false",
    };

    internal static readonly Option<string> FetchTestLogsOption = new("--rbs_fetch_test_logs")
    {
        Description = "After a 'test' or 'coverage' on an agent with its own copy of the workspace, fetch the test.log/test.xml of the tests that did not pass into <workspace>/jbazel-out/testlogs/.",
        HelpName = "true|false",
        Arity = ArgumentArity.ZeroOrOne,
        CustomParser = result => Parse<bool>(result, OptionValues.TryParseSwitch) ? "true" : "false",
    };

    internal static readonly Option<string> RelayOption = new("--rbs_relay")
    {
        Description = "In tunnel mode, ask the gateway to relay the agent connection byte for byte to the agent's own HTTP/2 server; a gateway that does not relay forwards each call as before. false: always have the gateway forward each call.",
        HelpName = "true|false",
        Arity = ArgumentArity.ZeroOrOne,
        CustomParser = result => Parse<bool>(result, OptionValues.TryParseSwitch) ? "true" : "false",
    };

    internal static readonly Option<bool> HelpOption = new("--rbs_help")
    {
        Description = "Show jbazel's options and exit (bazel's own help: 'jbazel help').",
    };

    internal static readonly Option<bool> VersionOption = new("--rbs_version")
    {
        Description = "Show jbazel's version and exit (bazel's: 'jbazel version').",
    };

    /// <summary>Options that are settings (environment variables and rc files can set these).</summary>
    internal static readonly IReadOnlyList<Option> SettingOptions =
        [OrchestratorOption, ConnectOption, StatusOption, ApiKeyOption, TimeoutOption, FetchOutputsOption, SyncOption, SyncExcludeOption, SyncGitignoreOption, FetchTestLogsOption, RelayOption];

    /// <summary>Switches: written bare or as <c>--rbs_x=value</c>, never taking the next token as their value.</summary>
    internal static readonly IReadOnlySet<Option> SwitchOptions = new HashSet<Option> { FetchOutputsOption, SyncOption, SyncGitignoreOption, FetchTestLogsOption, RelayOption };

    /// <summary>Option names whose value may be the next token (<c>--rbs_x value</c>).</summary>
    internal static readonly IReadOnlySet<string> OptionsTakingValues =
        SettingOptions.Where(option => !SwitchOptions.Contains(option)).Select(option => option.Name).ToHashSet(StringComparer.Ordinal);

    private static readonly ParserConfiguration s_parserConfiguration = new()
    {
        // Values such as API keys must never be read as @response-files, and there is nothing to bundle.
        ResponseFileTokenReplacer = null,
        EnablePosixBundling = false,
    };

    private readonly CliEnvironment _environment;
    private readonly StandardStreams _streams;
    private IReadOnlyList<string> _bazelArgs = [];

    public BazelCommand(CliEnvironment environment, StandardStreams streams)
        : base("jbazel: bazel, run on a warm remote build agent.")
    {
        _environment = environment;
        _streams = streams;

        // bazel owns -h/--help/--version; jbazel's own spellings are --rbs_help/--rbs_version.
        Options.Clear();
        foreach (var option in SettingOptions)
        {
            Options.Add(option);
        }

        Options.Add(HelpOption);
        Options.Add(VersionOption);
        SetAction(ExecuteAsync);
    }

    public static string Version { get; } =
        typeof(BazelCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? "0.0.0";

    /// <summary>Runs jbazel with its full command line; returns the process exit code.</summary>
    public async Task<int> InvokeAsync(IReadOnlyList<string> args, CancellationToken cancellationToken)
    {
        var split = ArgumentSplitter.Split(args, OptionsTakingValues);
        var parseResult = ParseTokens(split.RbsTokens);
        if (parseResult.Errors.Count > 0)
        {
            _streams.WriteErrorLine($"rbs: {DescribeErrors(parseResult)} Run 'jbazel --rbs_help' for jbazel's options.");
            return ExitCodes.CommandLineError;
        }

        _bazelArgs = split.BazelArgs;
        var invocation = new InvocationConfiguration
        {
            // jbazel handles SIGINT/SIGTERM itself (first: remote interrupt, second: leave).
            ProcessTerminationTimeout = null,
            EnableDefaultExceptionHandler = false,
        };
        return await parseResult.InvokeAsync(invocation, cancellationToken);
    }

    /// <summary>The first parse error as one sentence; unknown --rbs_* names get a plain "unknown option".</summary>
    internal static string DescribeErrors(ParseResult parseResult) =>
        parseResult.UnmatchedTokens.Count > 0
            ? $"unknown option '{parseResult.UnmatchedTokens[0]}'."
            : parseResult.Errors[0].Message;

    internal ParseResult ParseTokens(IReadOnlyList<string> tokens) => Parse(tokens, s_parserConfiguration);

    internal RbsSettings ResolveSettings(ParseResult commandLine, string? workspaceRoot) =>
        new SettingsResolver(ParseTokens).Resolve(commandLine, _environment, workspaceRoot);

    private async Task<int> ExecuteAsync(ParseResult parseResult, CancellationToken cancellationToken)
    {
        if (parseResult.GetValue(HelpOption))
        {
            _streams.WriteOutput(HelpText());
            return ExitCodes.Success;
        }

        if (parseResult.GetValue(VersionOption))
        {
            _streams.WriteOutput($"jbazel {Version}\n");
            return ExitCodes.Success;
        }

        // Registered before anything remote happens, so Ctrl-C never kills jbazel mid-allocation.
        using var interrupts = InterruptSignals.Register();
        try
        {
            return await RunRemoteAsync(parseResult, interrupts, cancellationToken);
        }
        catch (OperationCanceledException) when (interrupts.First.IsCancellationRequested || cancellationToken.IsCancellationRequested)
        {
            return ExitCodes.Interrupted;
        }
        catch (SettingsException ex)
        {
            _streams.WriteErrorLine($"rbs: {ex.Message}");
            return ExitCodes.CommandLineError;
        }
        catch (BazelRcException ex)
        {
            // What bazel itself says of an unreadable --bazelrc, with its exit code.
            _streams.WriteErrorLine(ex.Message);
            return ExitCodes.CommandLineError;
        }
        catch (RemoteFailure ex)
        {
            _streams.WriteErrorLine($"rbs: {ex.Message}");
            return ex.ExitCode;
        }
        catch (Exception ex)
        {
            // One line, like every other failure; the type and message are what a bug report needs first.
            _streams.WriteErrorLine($"rbs: internal error in jbazel {Version} ({ex.GetType().Name}: {ex.Message}). Please report it.");
            return ExitCodes.InternalError;
        }
    }

    private async Task<int> RunRemoteAsync(ParseResult parseResult, InterruptSignals interrupts, CancellationToken cancellationToken)
    {
        var workspace = WorkspaceLocator.Find(_environment.CurrentDirectory);
        if (workspace is null)
        {
            // bazel's wording, with every marker file jbazel accepts.
            var command = _bazelArgs.FirstOrDefault(arg => !arg.StartsWith('-')) ?? "requested";
            _streams.WriteErrorLine(
                $"ERROR: The '{command}' command is only supported from within a workspace (below a directory having a {string.Join(", ", WorkspaceLocator.MarkerFiles.SkipLast(1))} or {WorkspaceLocator.MarkerFiles[^1]} file).");
            return ExitCodes.CommandLineError;
        }

        var settings = ResolveSettings(parseResult, workspace.Root);
        var root = RepoHash.RealPath(workspace.Root);
        var request = new GetServerRequest
        {
            RepoHash = RepoHash.Compute(_environment.HostName, root),
            SourcePath = root,
            ConnectMode = settings.Connect switch
            {
                ConnectPreference.Direct => ConnectMode.Direct,
                ConnectPreference.Tunnel => ConnectMode.Tunnel,
                _ => ConnectMode.Unspecified,
            },
            ClientVersion = $"jbazel/{Version}",
            ClientHost = _environment.HostName,
            SyncWorkspace = settings.Sync,
        };

        using var channels = new ChannelPool(settings.Relay);
        using var allocating = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, interrupts.First);
        PhaseTrace.Mark("getserver");
        var cache = AllocationCache.For(_environment.Get("XDG_CACHE_HOME"), _environment.HomeDirectory, settings.Orchestrator, settings.ApiKey, request, TimeProvider.System);
        var allocation = await new GetServerClient(channels, settings, TraceParent.New()).AllocateAsync(request, cache, allocating.Token);
        PhaseTrace.Mark("getserver-done");
        var showStatus = settings.Status == StatusMode.Always || (settings.Status == StatusMode.Auto && !Console.IsErrorRedirected);
        if (showStatus)
        {
            _streams.WriteErrorLine(allocation.StatusLine);
        }

        var syncing = SyncStep.IsNeeded(allocation.Response, settings, root);
        // An agent with its own copy of the workspace reads this machine's bazelrc files, never its own ~/.bazelrc.
        var rcFiles = syncing ? ClientRcFiles.Collect(_bazelArgs, root, _environment.CurrentDirectory, _environment.Get("HOME")) : null;
        PreparedSync? sync = null;
        if (syncing)
        {
            sync = SyncStep.Prepare(allocation, channels, settings, _environment, root, request.RepoHash, rcFiles!.WorkspaceFiles, _streams.WriteErrorLine, allocating.Token);
            if (sync.Skipped)
            {
                // The tree this workspace last synced to this agent: the start names it, and the agent checks it.
                sync.WarnSkipped();
                if (showStatus)
                {
                    _streams.WriteErrorLine(sync.SkippedStatusLine);
                }
            }
            else
            {
                var synced = await sync.RunAsync(allocating.Token);
                if (showStatus)
                {
                    _streams.WriteErrorLine(synced.StatusLine);
                }
            }
        }

        var start = new StartCommand
        {
            RelativeWorkingDirectory = workspace.RelativeWorkingDirectory,
            Terminal = TerminalProbe.Probe(_environment),
            InvocationId = Guid.NewGuid().ToString(),
            ClientWorkspaceRoot = root,
        };
        if (showStatus && allocation.DashboardLink(start.InvocationId) is { } dashboard)
        {
            // Its own line: the status line's format is what scripts grep.
            _streams.WriteErrorLine($"rbs: dashboard {dashboard}");
        }

        var bazelArgs = rcFiles?.BazelArgs ?? _bazelArgs;
        start.Args.AddRange(bazelArgs.Select(ArgumentBytes.ForDisplay));
        if (bazelArgs.Any(ArgumentBytes.HasEscapes))
        {
            // Bytes that are not UTF-8 (RawArguments kept them): sent as they are, for the agent to pass on unchanged.
            start.RawArgs.AddRange(bazelArgs.Select(arg => ByteString.CopyFrom(ArgumentBytes.Encode(arg))));
        }
        if (rcFiles?.Proto is { } clientBazelrc)
        {
            start.ClientBazelrc = clientBazelrc;
        }

        start.Env.Add(TerminalProbe.ForwardedEnvironment(_environment));
        start.CollectOutputs = OutputsStep.Applies(settings.FetchOutputs, _bazelArgs);
        start.CollectTestLogs = TestLogsStep.Applies(syncing, settings.FetchTestLogs, _bazelArgs);

        Func<string, CancellationToken, Task<byte[]>>? resync = null;
        if (sync is { Skipped: true })
        {
            start.ExpectedTreeDigest = ByteString.CopyFrom(sync.ExpectedTreeDigest);
            resync = async (reason, token) =>
            {
                if (showStatus)
                {
                    _streams.WriteErrorLine($"rbs: the agent's copy of the workspace is not the tree last synced to it ({reason}); syncing");
                }

                using var resyncing = CancellationTokenSource.CreateLinkedTokenSource(token, interrupts.First);
                var synced = await sync.RunAsync(resyncing.Token);
                if (showStatus)
                {
                    _streams.WriteErrorLine(synced.StatusLine);
                }

                return synced.ManifestDigest;
            };
        }

        PhaseTrace.Mark("execute");
        var exitCode = await new CommandSession(allocation, channels, _streams, interrupts).RunAsync(start, cancellationToken, resync);
        PhaseTrace.Mark("execute-done");
        if (start.CollectTestLogs)
        {
            using var fetchingLogs = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, interrupts.First);
            await TestLogsStep.RunAsync(allocation, channels, workspace.Root, start.InvocationId, _streams, fetchingLogs.Token);
            return exitCode;
        }

        if (exitCode != ExitCodes.Success || !start.CollectOutputs)
        {
            return exitCode;
        }

        using var fetching = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, interrupts.First);
        return await OutputsStep.RunAsync(allocation, channels, workspace.Root, start.InvocationId, showStatus, _streams, fetching.Token);
    }

    internal static string HelpText()
    {
        var text = new StringBuilder();
        text.Append($"""
            jbazel {Version}: bazel, run on a warm remote build agent (RBS).

            Usage: jbazel [--rbs_* options] [bazel startup options] <command> [command options] [-- args]

            Every argument that is not a --rbs_* option is passed to bazel unchanged and in order. jbazel's
            options may appear anywhere before '--'; after '--' nothing is interpreted. Values are given as
            --rbs_x=value or --rbs_x value.

            Options (environment variable, default):

            """);
        foreach (var option in SettingOptions)
        {
            text.Append($"  {option.Name}={option.HelpName}\n      {option.Description}\n      env {SettingsResolver.EnvironmentVariableFor(option)}, default {DefaultText(option)}\n");
        }

        text.Append($"  {HelpOption.Name}\n      {HelpOption.Description}\n");
        text.Append($"  {VersionOption.Name}\n      {VersionOption.Description}\n");
        text.Append("""

            Precedence, first wins: command line > environment (RBS_*) > <workspace>/.jbazelrc > ~/.jbazelrc > default.
            A .jbazelrc holds --rbs_x=value tokens, any number per line; '#' starts a comment line; a later line
            overrides an earlier one. Bad values are an error (exit 2), wherever they come from.

            Exit codes: bazel's own code passes through (0 ok, 1 build failed, 3 tests failed, ...).
              2   not in a workspace, or a bad --rbs_* option / RBS_* variable / .jbazelrc line
              8   interrupted (a second Ctrl-C leaves at once; one Ctrl-C waits for bazel's own code)
              34  the orchestrator or agent rejected the request (permanent; fix the setup)
              36  this machine's side failed: a workspace file could not be read for the sync, or the build
                  succeeded but --rbs_fetch_outputs could not write jbazel-out/ (local disk)
              37  internal jbazel error
              38  the orchestrator or agent could not be reached, or the connection broke (transient; run again);
                  also a failed --rbs_fetch_outputs transfer after a successful build
              50  the orchestrator runs as many agents as it may (per user or in total): wait for idle agents
                  to be reaped, build where you already have an agent, or ask for a higher limit
              141 stdout was closed by its reader (e.g. '| head')

            """);
        return text.ToString();
    }

    private static string DefaultText(Option option) => option.Name switch
    {
        "--rbs_orchestrator" => RbsSettings.DefaultOrchestrator.OriginalString,
        "--rbs_connect" => "auto",
        "--rbs_status" => "auto",
        "--rbs_timeout" => OptionValues.FormatDuration(RbsSettings.DefaultTimeout),
        "--rbs_fetch_outputs" => "false",
        "--rbs_sync" => "false",
        "--rbs_sync_gitignore" => "false",
        "--rbs_fetch_test_logs" => "true",
        "--rbs_relay" => "true",
        _ => "none",
    };

    private delegate bool TryParse<T>(string text, out T value, out string error);

    private static T? Parse<T>(ArgumentResult result, TryParse<T> tryParse)
    {
        var text = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
        if (tryParse(text, out var value, out var error))
        {
            return value;
        }

        var option = (result.Parent as OptionResult)?.Option.Name ?? "value";
        result.AddError($"invalid {option}: {error}.");
        return default;
    }
}
