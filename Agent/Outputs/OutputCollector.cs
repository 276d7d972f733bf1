using Rbs.V1;

namespace Rbs.Agent.Outputs;

/// <summary>
/// StartCommand.collect_outputs: asks bazel for a Build Event Protocol file on <c>build</c> commands and, once the build
/// succeeded, records its top-level outputs (with digests) for rbs.v1.Outputs.
/// </summary>
internal sealed partial class OutputCollector(OutputStore store, ILogger<OutputCollector> logger) : IDisposable
{
    public const string BuildEventFlag = "--build_event_json_file";

    private readonly Lock _lock = new();
    private DirectoryInfo? _directory;

    /// <summary>
    /// The collection for this command, whose <see cref="OutputCollection.Arguments"/> replace the client's; null when
    /// the command does not collect (not asked, not a <c>build</c>, or the user names their own BEP file — then the
    /// invocation is recorded with a note that ListOutputs reports).
    /// </summary>
    public OutputCollection? Begin(string invocationId, StartCommand start)
    {
        if (!start.CollectOutputs)
        {
            return null;
        }

        var args = start.Args;
        var verb = VerbIndex(args);
        if (verb < 0 || args[verb] != "build")
        {
            Skip(invocationId, $"outputs are collected for 'build' commands only; this was '{(verb < 0 ? "" : args[verb])}'");
            return null;
        }

        for (var i = verb + 1; i < args.Count && args[i] != "--"; i++)
        {
            if (args[i] == BuildEventFlag || args[i].StartsWith(BuildEventFlag + "=", StringComparison.Ordinal))
            {
                // Bazel takes the last value, so the user's file wins over the agent's and the agent would read nothing.
                Skip(invocationId, $"the command line sets its own {BuildEventFlag}, so the agent cannot collect outputs; drop it to fetch outputs");
                return null;
            }
        }

        var file = Path.Combine(Directory().FullName, $"{Guid.NewGuid():N}.bep.json");
        // Right after the verb: startup options stay before it, and a later user flag would still win.
        List<string> arguments = [.. args.Take(verb + 1), $"{BuildEventFlag}={file}", .. args.Skip(verb + 1)];
        return new OutputCollection(this, invocationId, file, arguments);
    }

    /// <summary>Index of the bazel command (the first argument not starting with '-'), or -1.</summary>
    public static int VerbIndex(IReadOnlyList<string> args)
    {
        for (var i = 0; i < args.Count; i++)
        {
            if (!args[i].StartsWith('-'))
            {
                return i;
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

    internal void Complete(string invocationId, string file, int exitCode)
    {
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
            var records = new List<OutputRecord>(events.Outputs.Count);
            var buffer = new byte[OutputRecord.BlockSize];
            var hashed = 0;
            foreach (var output in Expand(events.Outputs, notes))
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
    }
}

/// <summary>One command's output collection: the arguments bazel runs with, and the step after it exits.</summary>
internal sealed class OutputCollection(OutputCollector collector, string invocationId, string file, IReadOnlyList<string> arguments)
{
    /// <summary>The client's arguments plus <c>--build_event_json_file=&lt;private file&gt;</c> after the verb.</summary>
    public IReadOnlyList<string> Arguments { get; } = arguments;

    /// <summary>Reads the outputs if the build succeeded (before the exit frame goes out, so a ListOutputs right after
    /// it finds them); always deletes the BEP file.</summary>
    /// <remarks>Not cancellable: it is bounded, and it must delete the BEP file even when the client has gone.</remarks>
    public Task CompleteAsync(int exitCode) =>
        Task.Run(() => collector.Complete(invocationId, file, exitCode), CancellationToken.None);
}
