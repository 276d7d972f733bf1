using Rbs.V1;

namespace Rbs.Agent.Outputs;

/// <summary>
/// StartCommand.collect_outputs: asks bazel for a Build Event Protocol file on <c>build</c> commands and, once the build
/// succeeded, records its top-level outputs (with digests) for rbs.v1.Outputs. StartCommand.collect_test_logs: on
/// <c>test</c>/<c>coverage</c>, records the test.log/test.xml of the tests that did not pass, found in bazel's testlogs
/// tree after the command (<see cref="TestLogScanner"/>): no BEP file there, so bazel's stderr stays what it is locally.
/// </summary>
internal sealed partial class OutputCollector(OutputStore store, ILogger<OutputCollector> logger) : IDisposable
{
    public const string BuildEventFlag = "--build_event_json_file";

    // bazel 4.2.3's startup options that take a value; the same list as jbazel's BazelStartupArgs.Unary, because both
    // sides must find the same command in `--output_user_root /x test //...`.
    private static readonly HashSet<string> s_unaryStartupOptions = new(StringComparer.Ordinal)
    {
        "bazelrc", "connect_timeout_secs", "failure_detail_out", "io_nice_level", "local_startup_timeout_secs",
        "macos_qos_class", "max_idle_secs", "output_base", "output_user_root", "server_jvm_out", "host_jvm_args",
        "host_jvm_profile", "server_javabase", "host_javabase", "install_base", "install_md5", "digest_function",
        "unix_digest_hash_attribute_name", "command_port", "invocation_policy",
    };

    private readonly Lock _lock = new();
    private DirectoryInfo? _directory;

    /// <summary>
    /// The collection for this command, whose <see cref="OutputCollection.Arguments"/> replace <paramref name="args"/>;
    /// null when the command does not collect (not asked; collect_outputs on anything but <c>build</c>,
    /// collect_test_logs on anything but <c>test</c>/<c>coverage</c>; or the user names their own BEP file — then the
    /// invocation is recorded with a note that ListOutputs reports).
    /// </summary>
    /// <param name="args">The arguments bazel would run with (the client's, with its rc files in front).</param>
    /// <param name="workspaceRoot">The workspace bazel runs in (test logs are found through its bazel-out symlink).</param>
    public OutputCollection? Begin(string invocationId, StartCommand start, IReadOnlyList<string> args, string workspaceRoot)
    {
        if (!start.CollectOutputs && !start.CollectTestLogs)
        {
            return null;
        }

        var verb = VerbIndex(args);
        var command = verb < 0 ? "" : args[verb];
        var kind = start.CollectOutputs && command == "build" ? CollectionKind.TopLevelOutputs
            : start.CollectTestLogs && command is "test" or "coverage" ? CollectionKind.TestLogs
            : (CollectionKind?)null;
        if (kind is null)
        {
            Skip(invocationId, start.CollectOutputs
                ? $"outputs are collected for 'build' commands only; this was '{command}'"
                : $"test logs are collected for 'test' and 'coverage' commands only; this was '{command}'");
            return null;
        }

        if (kind == CollectionKind.TestLogs)
        {
            // The coarse clock that stamps files may lag the precise one by a tick; a test's status is written long after.
            return new OutputCollection(this, invocationId, "", args, kind.Value)
            {
                WorkspaceRoot = workspaceRoot,
                Since = DateTime.UtcNow - TimeSpan.FromMilliseconds(50),
            };
        }

        for (var i = verb + 1; i < args.Count && args[i] != "--"; i++)
        {
            if (args[i] == BuildEventFlag || args[i].StartsWith(BuildEventFlag + "=", StringComparison.Ordinal))
            {
                // Bazel takes the last value, so the user's file wins over the agent's and the agent would read nothing.
                Skip(invocationId, $"the command line sets its own {BuildEventFlag}, so the agent cannot collect outputs; drop it to fetch them");
                return null;
            }
        }

        var file = Path.Combine(Directory().FullName, $"{Guid.NewGuid():N}.bep.json");
        // Right after the verb: startup options stay before it, and a later user flag would still win.
        List<string> arguments = [.. args.Take(verb + 1), $"{BuildEventFlag}={file}", .. args.Skip(verb + 1)];
        return new OutputCollection(this, invocationId, file, arguments, kind.Value);
    }

    /// <summary>
    /// Index of the bazel command: the first argument not starting with '-' that is not the value of a startup option
    /// written <c>--output_user_root /x</c> (bazel 4.2.3's startup options that take a value); -1 when there is none.
    /// </summary>
    public static int VerbIndex(IReadOnlyList<string> args)
    {
        for (var i = 0; i < args.Count; i++)
        {
            var arg = args[i];
            if (!arg.StartsWith('-'))
            {
                return i;
            }

            if (arg.StartsWith("--", StringComparison.Ordinal) && !arg.Contains('=', StringComparison.Ordinal) && s_unaryStartupOptions.Contains(arg[2..]))
            {
                i++;
            }
        }

        return -1;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            try
            {
                _directory?.Delete(recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    internal void Complete(OutputCollection collection, int exitCode)
    {
        var (invocationId, file) = (collection.InvocationId, collection.File);
        if (collection.Kind == CollectionKind.TestLogs)
        {
            CompleteTestLogs(invocationId, collection.WorkspaceRoot, collection.Since);
            return;
        }

        try
        {
            if (exitCode != 0)
            {
                Skip(invocationId, $"the build failed (exit code {exitCode}); outputs are collected after successful builds only");
                return;
            }

            if (!File.Exists(file))
            {
                Skip(invocationId, "bazel wrote no build event file (is --build_event_json_file overridden in a bazelrc?)");
                return;
            }

            var started = Environment.TickCount64;
            var events = BuildEventFile.Read(file, OutputStore.MaxFilesPerInvocation);
            var notes = new List<string>(events.Notes);
            var (records, hashed) = Record(Expand(events.Outputs, notes), notes);
            var note = OutputPaths.Describe(notes);
            store.Add(new InvocationOutputs(invocationId, records, note));
            Log.Collected(logger, invocationId, records.Count, hashed, Environment.TickCount64 - started, note);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Skip(invocationId, $"the build event file could not be read ({ex.Message})");
        }
        finally
        {
            TryDelete(file);
        }
    }

    /// <summary>
    /// The logs of the tests that did not pass, whatever bazel's exit code (3 when tests failed, 0 when a flaky test
    /// passed on a retry, 1 or 8 when only some ran): the client fetches what is there.
    /// </summary>
    private void CompleteTestLogs(string invocationId, string workspaceRoot, DateTime since)
    {
        try
        {
            var started = Environment.TickCount64;
            var failed = TestLogScanner.Scan(workspaceRoot, since, OutputStore.MaxFilesPerInvocation);
            var notes = new List<string>(failed.Notes);
            var (records, hashed) = Record(failed.Logs, notes);
            var note = OutputPaths.Describe(notes);
            store.Add(new InvocationOutputs(invocationId, records, note) { TestLabels = failed.Labels });
            Log.CollectedTestLogs(logger, invocationId, records.Count, failed.Labels.Count, hashed, Environment.TickCount64 - started, note);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            Skip(invocationId, $"bazel's testlogs could not be read ({ex.Message})");
        }
    }

    private (List<OutputRecord> Records, int Hashed) Record(IEnumerable<BuildEventOutput> outputs, List<string> notes)
    {
        var records = new List<OutputRecord>();
        var buffer = new byte[OutputRecord.BlockSize];
        var hashed = 0;
        foreach (var output in outputs)
        {
            var cached = store.Cached(output.LocalPath);
            try
            {
                var record = OutputRecord.Create(output.RelativePath, output.LocalPath, cached, buffer);
                hashed += ReferenceEquals(cached?.Digest, record.Digest) ? 0 : 1;
                records.Add(record);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                notes.Add($"'{output.RelativePath}' could not be read ({ex.Message})");
            }
        }

        return (records, hashed);
    }

    /// <summary>Directory outputs (tree artifacts) stand for the files below them.</summary>
    private static IEnumerable<BuildEventOutput> Expand(IReadOnlyList<BuildEventOutput> outputs, List<string> notes)
    {
        var count = 0;
        foreach (var output in outputs)
        {
            if (!System.IO.Directory.Exists(output.LocalPath))
            {
                if (++count <= OutputStore.MaxFilesPerInvocation)
                {
                    yield return output;
                }

                continue;
            }

            var options = new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint };
            foreach (var path in System.IO.Directory.EnumerateFiles(output.LocalPath, "*", options))
            {
                var relative = output.RelativePath + "/" + Path.GetRelativePath(output.LocalPath, path).Replace('\\', '/');
                if (OutputPaths.IsSafeRelative(relative) && ++count <= OutputStore.MaxFilesPerInvocation)
                {
                    yield return new BuildEventOutput(relative, path);
                }
            }
        }

        if (count > OutputStore.MaxFilesPerInvocation)
        {
            notes.Add($"listed only the first {OutputStore.MaxFilesPerInvocation} outputs");
        }
    }

    private void Skip(string invocationId, string reason)
    {
        store.Add(new InvocationOutputs(invocationId, null, reason));
        Log.NotCollected(logger, invocationId, reason);
    }

    private DirectoryInfo Directory()
    {
        lock (_lock)
        {
            // Private (0700) and per agent process: the BEP file names every output path of the build.
            if (_directory is null || !_directory.Exists)
            {
                _directory = System.IO.Directory.CreateTempSubdirectory("rbs-agent-bep-");
            }

            return _directory;
        }
    }

    private static void TryDelete(string file)
    {
        try
        {
            File.Delete(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static partial class Log
    {
        [LoggerMessage(EventId = 400, Level = LogLevel.Information, Message = "Invocation {InvocationId}: listed {Count} outputs ({Hashed} hashed, the rest unchanged) in {Milliseconds} ms. {Note}")]
        public static partial void Collected(ILogger logger, string invocationId, int count, int hashed, long milliseconds, string note);

        [LoggerMessage(EventId = 401, Level = LogLevel.Information, Message = "Invocation {InvocationId}: no outputs collected: {Reason}")]
        public static partial void NotCollected(ILogger logger, string invocationId, string reason);

        [LoggerMessage(EventId = 402, Level = LogLevel.Information, Message = "Invocation {InvocationId}: listed {Count} log files of {Tests} tests that did not pass ({Hashed} hashed) in {Milliseconds} ms. {Note}")]
        public static partial void CollectedTestLogs(ILogger logger, string invocationId, int count, int tests, int hashed, long milliseconds, string note);
    }
}

/// <summary>What a collection records: a build's top-level outputs, or the logs of the tests that did not pass.</summary>
internal enum CollectionKind
{
    TopLevelOutputs,
    TestLogs,
}

/// <summary>One command's output collection: the arguments bazel runs with, and the step after it exits.</summary>
internal sealed class OutputCollection(OutputCollector collector, string invocationId, string file, IReadOnlyList<string> arguments, CollectionKind kind)
{
    /// <summary>The client's arguments; for outputs plus <c>--build_event_json_file=&lt;private file&gt;</c> after the verb.</summary>
    public IReadOnlyList<string> Arguments { get; } = arguments;

    public string InvocationId { get; } = invocationId;

    /// <summary>The private BEP file (outputs only; empty for test logs).</summary>
    public string File { get; } = file;

    public CollectionKind Kind { get; } = kind;

    /// <summary>Test logs: the workspace whose bazel-out holds them.</summary>
    public string WorkspaceRoot { get; init; } = "";

    /// <summary>Test logs: the command's start; status files older than this belong to earlier commands.</summary>
    public DateTime Since { get; init; }

    /// <summary>Reads the outputs if the build succeeded, or the logs of the tests that did not pass (before the exit
    /// frame goes out, so a ListOutputs right after it finds them); always deletes the BEP file.</summary>
    /// <remarks>Not cancellable: it is bounded, and it must delete the BEP file even when the client has gone.</remarks>
    public Task CompleteAsync(int exitCode) =>
        Task.Run(() => collector.Complete(this, exitCode), CancellationToken.None);
}
